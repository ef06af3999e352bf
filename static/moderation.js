// Running a room from the page: the member actions (a direct message for everyone; kick,
// mute and ban for operators and the room's owners), deleting messages, and what the
// server tells the room about moderation (docs/protocol.md, "Moderation").

import { link } from "./connection.js";
import { openDirect } from "./direct.js";
import { canModerate, currentRoom, sameNick, state } from "./state.js";
import { notify, ui } from "./dom.js";
import { addEvent } from "./log.js";
import { removeRoom, renderMembers, renderRights } from "./view.js";

const DURATIONS = [
  [604800, "week"],
  [86400, "day"],
  [3600, "hour"],
  [60, "minute"],
  [1, "second"],
];

function duration(seconds) {
  for (const [size, unit] of DURATIONS) {
    if (seconds >= size && seconds % size === 0) {
      const n = seconds / size;
      return `${n} ${unit}${n === 1 ? "" : "s"}`;
    }
  }
  return `${seconds} seconds`;
}

function because(message) {
  return typeof message.reason === "string" && message.reason ? `: ${message.reason}` : "";
}

// ---- the member actions panel -----------------------------------------------------------

/** Opens (or, pressed again, closes) the actions for `nick` in the current room. */
export function pickMember(nick) {
  if (state.picked === nick && !ui.memberActions.hidden) {
    closeActions();
    return;
  }
  const room = currentRoom();
  if (!room) return;
  state.picked = nick;
  ui.memberActionsTitle.textContent = nick;
  ui.directOpen.textContent = `Message ${nick}`;
  ui.moderate.hidden = !canModerate(room);
  ui.moderateReason.value = "";
  ui.memberActions.hidden = false;
  renderMembers();
  ui.directOpen.focus();
}

export function closeActions() {
  const nick = state.picked;
  state.picked = null;
  ui.memberActions.hidden = true;
  renderMembers();
  if (nick !== null) {
    for (const button of ui.memberList.querySelectorAll("button")) {
      if (button.dataset.nick === nick) button.focus();
    }
  }
}

/** The panel follows the room shown and the member's presence. */
export function refreshActions() {
  const room = currentRoom();
  if (state.picked === null) return;
  if (!room || !room.members.has(state.picked)) {
    state.picked = null;
    ui.memberActions.hidden = true;
    return;
  }
  ui.moderate.hidden = !canModerate(room);
}

export function wireActions() {
  ui.directOpen.addEventListener("click", () => {
    const nick = state.picked;
    closeActions();
    if (nick !== null) openDirect(nick);
  });
  ui.memberActionsClose.addEventListener("click", closeActions);
  ui.memberActions.addEventListener("keydown", (event) => {
    if (event.key === "Escape") closeActions();
  });
  ui.moderate.addEventListener("submit", (event) => {
    event.preventDefault();
    const room = currentRoom();
    const action = event.submitter?.value;
    if (!room || state.picked === null || !["kick", "mute", "ban"].includes(action)) return;
    const request = { type: action, room: room.name, nick: state.picked };
    const reason = ui.moderateReason.value.trim();
    if (reason) request.reason = reason;
    if (action !== "kick") request.seconds = Number(ui.moderateSeconds.value);
    if (!link.send(request)) notify("Not connected: try again once online.");
    else closeActions();
  });
}

export function deleteMessage(room, id) {
  if (!Number.isInteger(id)) return;
  if (!link.send({ type: "delete", room: room.name, id })) {
    notify("Not connected: try again once online.");
  }
}

// ---- what the server says ---------------------------------------------------------------

/** `kicked` and `banned`: the nick is out of the room; if it is us, we are. */
export function onRemoved(message) {
  const room = state.rooms.get(message.room);
  if (!room || room.direct) return;
  const nick = String(message.nick);
  const by = String(message.by);
  const banned = message.type === "banned";
  const seconds = Number.isInteger(message.seconds) ? message.seconds : 0;
  if (sameNick(nick, state.nick)) {
    removeRoom(room.name);
    const what = banned
      ? `You were banned from ${room.name} for ${duration(seconds)} by ${by}`
      : `You were removed from ${room.name} by ${by}`;
    notify(what + because(message));
    return;
  }
  if (banned && seconds === 0) {
    addEvent(room, `${by} lifted the ban on ${nick}`);
    return;
  }
  room.members.delete(nick);
  addEvent(
    room,
    banned
      ? `${nick} was banned by ${by} for ${duration(seconds)}${because(message)}`
      : `${nick} was removed by ${by}${because(message)}`,
  );
  if (room.name === state.current) renderMembers();
}

export function onMuted(message) {
  const room = state.rooms.get(message.room);
  if (!room || room.direct) return;
  const nick = String(message.nick);
  const by = String(message.by);
  const seconds = Number.isInteger(message.seconds) ? message.seconds : 0;
  const who = sameNick(nick, state.nick) ? "You" : nick;
  const text =
    seconds === 0
      ? `${by} lifted the mute on ${who === "You" ? "you" : nick}`
      : `${who} ${who === "You" ? "were" : "was"} muted by ${by} for ${duration(seconds)}${because(message)}`;
  addEvent(room, text);
}

export function onDeleted(message) {
  const room = state.rooms.get(message.room);
  if (!room || !Number.isInteger(message.id)) return;
  // The id stays in `seen`, so no later history brings the message back.
  room.seen.add(message.id);
  const gone = room.list.querySelector(
    `.msg[data-id="${message.id}"][data-generation="${room.generation}"]`,
  );
  gone?.remove();
}

export function onOwner(message) {
  const room = state.rooms.get(message.room);
  if (!room || room.direct) return;
  const nick = String(message.nick);
  const owner = message.owner === true;
  if (sameNick(nick, state.nick)) {
    room.owned = owner;
    renderRights();
  }
  addEvent(
    room,
    owner ? `${nick} now owns ${room.name}` : `${nick} no longer owns ${room.name}`,
  );
}

/** After `joined`: a token holder who just created the room owns it. */
export function guessOwner(room, message, fresh) {
  // The server names no owners in `joined`: a token holder alone in a room with no
  // messages yet has just created it (docs/protocol.md, "Moderation"). A wrong guess only
  // shows controls the server then refuses with `forbidden`.
  const members = Array.isArray(message.members) ? message.members : [];
  if (fresh && state.verified && room.name !== "lobby" && message.last_id === 0) {
    room.owned = members.length === 1 && sameNick(String(members[0]), state.nick);
  }
  renderRights();
}
