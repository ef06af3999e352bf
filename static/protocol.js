// rawchat.v1 (docs/protocol.md), client side: the hello, and what each server message
// does to the page's state and view.

import { link } from "./connection.js";
import { onDirectHistory, onDirectMsg, resumeDirect } from "./direct.js";
import { guessOwner, onDeleted, onMuted, onOwner, onRemoved } from "./moderation.js";
import { acknowledge, failByCid, failOldestOutstanding, failOutstanding, flushPending } from "./outbox.js";
import { afterJoined, onHistory, renderOlder } from "./paging.js";
import { nicks, onPresence } from "./presence.js";
import { DEFAULT_ROOM, MAX_NICK, saveToken, state } from "./state.js";
import { onTyping, stopped } from "./typing.js";
import { notify, setStatus, showJoinHint, ui } from "./dom.js";
import { addEvent, addMessage, addNotice } from "./log.js";
import { addRoom, removeRoom, renderRights, setJoined, switchRoom } from "./view.js";

// After a drop the server may not have noticed our old connection yet, so our own ghost
// can hold our nick for a moment: retry it a few times before settling for a variant.
const GHOST_RETRIES = 3;

export const ERROR_TEXT = {
  bad_nick: "That nickname is not allowed.",
  nick_taken: "That nickname is taken.",
  bad_room: "Room names are 1–64 letters, digits, _ - or ., not starting with a dot.",
  too_many_rooms: "You are in as many rooms as the server allows.",
  not_in_room: "You are not in that room.",
  text_too_long: "Message too long.",
  empty_text: "Message is empty.",
  rate_limited: "Slow down: you are sending too fast.",
  bad_token: "The server refused the sign-in token (expired, or not for this nickname).",
  token_required: "This server admits only people with a sign-in token.",
  nick_reserved: "That nickname is reserved for the holder of its token.",
  forbidden: "You are not allowed to do that.",
  muted: "You are muted in this room.",
  banned: "You are banned from that room.",
  no_such_nick: "Nobody by that nickname is connected.",
  no_such_message: "That message is no longer kept.",
};

export function sendHello() {
  // The first hello asks for the lobby; later ones rejoin exactly what we were in, which
  // may be nothing if the user left every room.
  const joined = [...state.rooms.values()].filter((room) => !room.direct);
  const rooms = state.epoch === null ? [DEFAULT_ROOM] : joined.map((room) => room.name);
  const hello = { type: "hello", nick: state.nick || state.wantedNick, rooms };
  if (state.token) hello.token = state.token;
  const resume = {};
  for (const room of joined) {
    if (room.lastId !== null) resume[room.name] = room.lastId;
  }
  if (state.epoch !== null && Object.keys(resume).length) {
    hello.resume = resume;
    hello.epoch = state.epoch;
  }
  link.send(hello);
}

export function dispatch(message) {
  switch (message.type) {
    case "welcome":
      return onWelcome(message);
    case "joined":
      return onJoined(message);
    case "left":
      return onLeft(message);
    case "msg":
      return message.to !== undefined ? onDirectMsg(message) : onMsg(message);
    case "presence":
      return onPresence(message);
    case "kicked":
    case "banned":
      return onRemoved(message);
    case "muted":
      return onMuted(message);
    case "deleted":
      return onDeleted(message);
    case "owner":
      return onOwner(message);
    case "typing":
      return onTyping(message);
    case "direct":
      return onDirectHistory(message);
    case "history":
      return onHistory(message);
    case "error":
      return onError(message);
    default:
      return undefined; // newer servers may say more than we understand
  }
}

export function onClose(event) {
  if (event.code === 1009 || event.code === 1007) {
    // The server closed over something we sent: sending it again after the reconnect
    // would only close the next connection too, so it fails here and waits for the user.
    failOutstanding(`the server refused it (close ${event.code})`);
  }
  state.welcomed = false;
  for (const room of state.rooms.values()) {
    room.request = null; // its answer is lost with the connection
    room.refreshing = false;
    setJoined(room, false);
  }
}

function onWelcome(message) {
  const restarted = state.epoch !== null && message.epoch !== state.epoch;
  state.epoch = String(message.epoch);
  state.welcomed = true;
  link.welcomed();
  state.ghostRetries = 0;
  state.variant = 1;
  state.nick = String(message.nick);
  state.welcomedNick = state.nick;
  state.nickBefore = null;
  ui.nick.value = state.nick;
  ui.nickForm.classList.remove("dirty");
  state.role = ["user", "operator"].includes(message.role) ? message.role : "guest";
  state.verified = message.verified === true;
  const limits = message.limits || {};
  state.maxText = Number.isInteger(limits.max_text) ? limits.max_text : Infinity;
  // Servers that do not say max_bytes read at least max_text bytes: the safe bound.
  state.maxBytes = Number.isInteger(limits.max_bytes) ? limits.max_bytes : state.maxText;
  state.maxRooms = Number.isInteger(limits.max_rooms) ? limits.max_rooms : Infinity;
  if (restarted) {
    // Ids start again after a restart: what we remember means nothing to this server.
    for (const room of state.rooms.values()) {
      room.lastId = null;
      room.seen.clear();
      room.generation += 1;
      room.more = false;
      room.gap = null;
      renderOlder(room);
      for (const item of room.list.querySelectorAll(".msg:not(.pending)")) {
        item.classList.add("stale");
      }
      addNotice(room, "The server restarted: earlier history is gone.", "restart");
      room.justRestarted = true;
    }
  }
  setStatus("online", "Online");
  renderRights();
  resumeDirect();
  for (const room of state.rooms.values()) if (room.direct) flushPending(room);
  if (state.usingVariant) {
    state.usingVariant = false;
    notify(`“${state.wantedNick}” is taken, so you are “${state.nick}”.`);
  }
}

function onJoined(message) {
  const name = String(message.room);
  let room = state.rooms.get(name);
  if (!room) room = addRoom(name);
  const resumedFrom = room.lastId;
  const resuming = resumedFrom !== null;
  // The answer to a refresh of the member list: the log already shows all it can.
  const refresh = room.refreshing && room.joined;
  room.refreshing = false;
  const history = Array.isArray(message.history) ? message.history : [];
  if (refresh) {
    // Nothing to say about history: it continues what is shown.
  } else if (resuming && message.truncated) {
    addNotice(room, "Some messages from while you were away are no longer available.", "gap");
  } else if (message.truncated && !room.justRestarted) {
    // With older pages still on the server, the line waits for the oldest of them.
    if (message.more === true) room.truncatedTop = true;
    else addEvent(room, "Earlier messages are no longer available.");
  }
  room.justRestarted = false;
  const unclaimed = [...room.pending.values()].filter((p) => p.sentOn !== null && !p.failed);
  for (const m of history) {
    // Our own message may have reached the server just before the connection broke,
    // with its acknowledgement lost: history shows it without a cid, so match it by
    // author and text rather than sending it a second time.
    const match = m.nick === state.nick && unclaimed.find((p) => p.text === m.text && !p.claimed);
    if (match) {
      match.claimed = true;
      acknowledge(room, match, m);
    } else {
      addMessage(room, m, false);
    }
  }
  if (Number.isInteger(message.last_id)) {
    room.lastId = Math.max(room.lastId ?? 0, message.last_id);
  }
  room.members = new Set(nicks(message.members));
  // A long list may stop before our own nick; we are in the room all the same.
  room.members.add(state.nick);
  guessOwner(room, message, !resuming);
  // `members` lists at most a few hundred nicks; `count` is how many there are.
  room.count = Number.isInteger(message.count) ? message.count : null;
  setJoined(room, true);
  if (state.joinWanted === name || state.current === null) {
    state.joinWanted = null;
    switchRoom(name);
  }
  if (state.focusComposer && !ui.text.disabled) {
    // Right after picking a nickname, the next thing to do is to write.
    state.focusComposer = false;
    ui.text.focus();
  }
  flushPending(room);
  afterJoined(room, message, resuming ? resumedFrom : null);
}

function onLeft(message) {
  removeRoom(String(message.room));
}

function onMsg(message) {
  const room = state.rooms.get(message.room);
  if (!room || !Number.isInteger(message.id)) return;
  stopped(room, String(message.nick));
  const pending = message.cid !== undefined ? room.pending.get(message.cid) : undefined;
  if (pending) {
    acknowledge(room, pending, message);
  } else {
    addMessage(room, message, true);
  }
}

function onError(message) {
  const code = String(message.code);
  const text = ERROR_TEXT[code] || String(message.message || code);
  if (message.cid !== undefined) {
    if (failByCid(message.cid, text)) return;
  } else if (code === "rate_limited" && failOldestOutstanding(text)) {
    // A limit enforced before the message is read cannot echo its cid. The server
    // answers in order, so the refused one is the oldest still waiting on this connection.
    return;
  }
  if (!state.welcomed) {
    onHelloRefused(code, text);
    return;
  }
  const renaming = ["bad_nick", "nick_taken", "nick_reserved", "forbidden"].includes(code);
  if (renaming && state.nickBefore !== null) {
    // Answer to a nick change; nothing changed on the server.
    if (state.nickBefore !== null) state.nick = state.nickBefore;
    state.nickBefore = null;
    ui.nick.value = state.nick;
    ui.nickForm.classList.remove("dirty");
    notify(text);
    return;
  }
  if (code === "bad_room" || code === "too_many_rooms" || code === "banned") {
    state.joinWanted = null;
    showJoinHint(text, true);
    return;
  }
  notify(text);
}

function onHelloRefused(code, text) {
  const rooms = [...state.rooms.values()].filter((room) => !room.direct).map((r) => r.name);
  if (code === "too_many_rooms" && rooms.length > 1) {
    // The server now allows fewer rooms than we were in: keep the first ones.
    const keep = Math.max(1, Math.min(state.maxRooms, rooms.length) - 1);
    for (const name of rooms.slice(keep)) removeRoom(name);
    notify("The server now allows fewer rooms: you left some.");
    sendHello();
    return;
  }
  if (code === "bad_token" || code === "token_required" || code === "nick_reserved") {
    // Retrying would be refused the same way: the user must bring a token or a nick.
    if (code === "bad_token") {
      state.token = null;
      saveToken(null);
    }
    askForNick(text);
    return;
  }
  if (code !== "nick_taken" && code !== "bad_nick") {
    // Anything else would leave us waiting for a welcome that never comes: start over.
    notify(text);
    link.close();
    return;
  }
  if (code === "bad_nick") {
    state.nick = "";
    askForNick("The server did not accept that nickname. Please pick another.");
    return;
  }
  const mine = state.nick || state.wantedNick;
  if (mine === state.welcomedNick && state.ghostRetries < GHOST_RETRIES) {
    // Probably our previous connection, not yet noticed as gone: try the same nick again.
    state.ghostRetries += 1;
    link.close();
    return;
  }
  state.variant += 1;
  const suffix = String(state.variant);
  const base = Array.from(state.wantedNick || mine)
    .slice(0, MAX_NICK - suffix.length)
    .join("");
  state.nick = base + suffix;
  state.usingVariant = true;
  ui.nick.value = state.nick;
  sendHello();
}

/** Stops connecting and shows the nickname prompt, with `error` if there is one. */
export function askForNick(error) {
  state.paused = true;
  link.stopTimers();
  if (!link.close()) setStatus("idle", "Offline");
  ui.loginError.textContent = error || "";
  ui.loginNick.value = state.wantedNick;
  ui.loginToken.value = state.token ?? "";
  ui.login.hidden = false;
  ui.app.inert = true;
  ui.loginNick.focus();
}

/** Connects as `nick` (or reconnects, if a connection is open). */
export function start(nick) {
  state.wantedNick = nick;
  state.nick = "";
  state.paused = false;
  ui.nick.value = nick;
  ui.login.hidden = true;
  ui.app.inert = false;
  if (!link.close()) link.connect();
  state.focusComposer = true;
}
