// Who is in each room (docs/protocol.md, "coalesced presence").

import { renamed as conversationRenamed } from "./direct.js";
import { link } from "./connection.js";
import { sameNick, state } from "./state.js";
import { stopped } from "./typing.js";
import { notify, ui } from "./dom.js";
import { addEvent } from "./log.js";
import { renderMembers } from "./view.js";
import { refreshActions } from "./moderation.js";

export function nicks(value) {
  return Array.isArray(value) ? value.map(String) : [];
}

// A presence frame lists a tick's changes (docs/protocol.md, "coalesced presence"): nicks
// that left (as they were called when the tick began), renames, then arrivals. They are
// applied as set operations, since a frame may repeat what our own `joined` showed.
export function onPresence(message) {
  const room = state.rooms.get(message.room);
  let left = nicks(message.left);
  let joined = nicks(message.joined);
  let renamed = (Array.isArray(message.renamed) ? message.renamed : [])
    .filter((pair) => Array.isArray(pair) && pair.length === 2)
    .map(([old, nick]) => [String(old), String(nick)]);
  if (!("joined" in message || "left" in message || "renamed" in message)) {
    // A server from before coalescing: one change per frame.
    const nick = String(message.nick);
    if (message.event === "join") joined = [nick];
    else if (message.event === "leave") left = [nick];
    else if (message.event === "nick") renamed = [[String(message.old), nick]];
  }
  for (const [old, nick] of renamed) {
    // Our own rename: one we asked for, or as a guest, the server's (a token holder came
    // for our nick). A token holder is never renamed: a rename from its nick is the guest's.
    const asked = state.nickBefore !== null && (old === state.nick || old === state.nickBefore);
    if (asked || (!state.verified && old === state.nick)) {
      if (!asked && !sameNick(old, nick)) {
        // We did not ask: a token holder came for the nick we had as a guest.
        notify(`“${old}” belongs to the holder of its token: you are now “${nick}”.`);
      }
      state.nick = nick;
      state.welcomedNick = nick;
      state.nickBefore = null;
      if (document.activeElement !== ui.nick) ui.nick.value = nick;
    }
    conversationRenamed(old, nick);
  }
  if (!room) return;
  const said = [];
  left = left.filter((nick) => room.members.delete(nick));
  for (const nick of left) stopped(room, nick);
  for (const [old, nick] of renamed) {
    room.members.delete(old);
    room.members.add(nick);
    said.push(`${old} is now known as ${nick}`);
  }
  joined = joined.filter((nick) => !room.members.has(nick));
  for (const nick of joined) room.members.add(nick);
  if (said.length + joined.length + left.length <= 5) {
    said.push(...joined.map((nick) => `${nick} joined`), ...left.map((nick) => `${nick} left`));
  } else {
    if (joined.length) said.push(`${joined.length} people joined: ${joined.join(", ")}`);
    if (left.length) said.push(`${left.length} people left: ${left.join(", ")}`);
  }
  if (Number.isInteger(message.omitted) && message.omitted > 0) {
    said.push(`${message.omitted} more people came, went or changed nick`);
    // Changes we were not told of leave our list wrong: ask for the room's list again
    // (a `join` of a room we are in is answered with a fresh `joined`, telling nobody).
    if (!room.refreshing && room.joined && link.send({ type: "join", room: room.name })) {
      room.refreshing = true;
    }
  }
  for (const text of said) addEvent(room, text);
  room.count = Number.isInteger(message.count) ? message.count : null;
  if (room.name === state.current) {
    refreshActions();
    renderMembers();
  }
}
