// Direct messages (docs/protocol.md, "Direct messages"): a conversation with one person
// is shown like a room, listed under "Direct messages", its key "@nick" (no room name
// starts with "@"). Its messages are `msg` with `to`; their ids come from the server's
// own counter, so each conversation keeps its own `seen` like a room.

import { link } from "./connection.js";
import { acknowledge } from "./outbox.js";
import { sameNick, state } from "./state.js";
import { addMessage, addRoom, setJoined, switchRoom, ui } from "./view.js";

/** The conversation with `peer`, made if there is none yet. */
export function conversation(peer) {
  for (const room of state.rooms.values()) {
    if (room.direct && sameNick(room.peer, peer)) return room;
  }
  const room = addRoom(`@${peer}`, peer);
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
