// "ann is typing…" (docs/protocol.md, "Typing"): we tell a room at most every 3 s while
// the user writes in it, and show someone's notice for 6 s unless another comes or their
// message arrives.

import { link } from "./connection.js";
import { currentRoom, sameNick, state } from "./state.js";
import { renderTyping } from "./view.js";

const SEND_EVERY_MS = 3000;
const SHOWN_MS = 6000;

/** The user wrote in the composer: tell the room, unless we did less than 3 s ago. */
export function typed() {
  const room = currentRoom();
  if (!room || room.direct || !room.joined) return;
  const now = Date.now();
  if (now - room.typingSentAt < SEND_EVERY_MS) return;
  if (link.send({ type: "typing", room: room.name })) room.typingSentAt = now;
}

export function onTyping(message) {
  const room = state.rooms.get(message.room);
  if (!room || room.direct || typeof message.nick !== "string") return;
  const nick = message.nick;
  if (sameNick(nick, state.nick)) return;
  clearTimeout(room.typing.get(nick));
  room.typing.set(
    nick,
    setTimeout(() => stopped(room, nick), SHOWN_MS),
  );
  if (room.name === state.current) renderTyping();
}

/** `nick` is no longer typing in `room`: their message came, or they left. */
export function stopped(room, nick) {
  if (!room.typing.has(nick)) return;
  clearTimeout(room.typing.get(nick));
  room.typing.delete(nick);
  if (room.name === state.current) renderTyping();
}
