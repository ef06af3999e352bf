// Direct messages (docs/protocol.md, "Direct messages"): a conversation with one person
// is shown like a room, listed under "Direct messages", its key "@1", "@2"… (no room name
// starts with "@"; the person's nick can change, the key cannot). Its messages are `msg` with `to`; their ids come from the server's
// own counter, so each conversation keeps its own `seen` like a room.

import { link } from "./connection.js";
import { acknowledge } from "./outbox.js";
import { sameNick, state } from "./state.js";
import { ui } from "./dom.js";
import { addMessage } from "./log.js";
import { addRoom, renderCurrent, setJoined, switchRoom } from "./view.js";

let made = 0;

/** The conversation with `peer`, made if there is none yet. */
export function conversation(peer) {
  for (const room of state.rooms.values()) {
    if (room.direct && sameNick(room.peer, peer)) return room;
  }
  made += 1;
  const room = addRoom(`@${made}`, peer);
  room.members = new Set([state.nick, peer]);
  setJoined(room, state.welcomed);
  return room;
}

/** Shows the conversation with `peer` and asks for what the server kept of it. */
export function openDirect(peer) {
  const room = conversation(peer);
  state.joinWanted = null;
  switchRoom(room.name);
  // Only conversations between token holders are kept; a guest is answered with none.
  if (state.verified) link.send({ type: "direct", with: peer });
  ui.text.focus();
}

/** A `msg` with `to`: to us, or our own (with its cid when it answers our sending). */
export function onDirectMsg(message) {
  if (!Number.isInteger(message.id)) return;
  const mine = sameNick(String(message.nick), state.nick);
  const room = conversation(String(mine ? message.to : message.nick));
  const pending = message.cid !== undefined ? room.pending.get(message.cid) : undefined;
  if (pending) acknowledge(room, pending, message);
  else addMessage(room, message, true);
}

/** The answer to `direct`: the kept messages, oldest first. */
export function onDirectHistory(message) {
  if (!Array.isArray(message.messages) || typeof message.with !== "string") return;
  const room = conversation(message.with);
  for (const m of message.messages) {
    if (Number.isInteger(m?.id)) addMessage(room, m, false);
  }
}

/** On welcome: conversations can be written to again, and their kept messages fetched. */
export function resumeDirect() {
  for (const room of state.rooms.values()) {
    if (!room.direct) continue;
    setJoined(room, true);
    if (state.verified) link.send({ type: "direct", with: room.peer });
  }
}

/** `old` is now called `nick`: their conversation follows them. */
export function renamed(old, nick) {
  for (const room of state.rooms.values()) {
    if (!room.direct || !sameNick(room.peer, old)) continue;
    room.peer = nick;
    room.members = new Set([state.nick, nick]);
    room.button.querySelector(".room-name").textContent = nick;
    room.list.setAttribute("aria-label", `Messages with ${nick}`);
    if (room.name === state.current) renderCurrent();
  }
}
