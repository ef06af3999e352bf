// The page itself: every DOM node the chat shows, and how rooms and messages are drawn.
//
// Everything the network sends reaches the DOM through textContent or attributes, never as
// markup. Each room keeps the ids it has shown, so history replayed on resume or rejoin
// never shows a message twice.

import { canModerate, currentRoom, newRoom, state } from "./state.js";

const STICKY_PX = 48;

const $ = (id) => document.getElementById(id);
export const ui = {
  app: $("app"),
  status: $("status"),
  statusText: $("status-text"),
  statusLive: $("status-live"),
  retryNow: $("retry-now"),
  nickForm: $("nick-form"),
  nick: $("nick"),
  roomList: $("room-list"),
  directTitle: $("direct-title"),
  directList: $("direct-list"),
  role: $("role"),
  typing: $("typing"),
  memberActions: $("member-actions"),
  memberActionsTitle: $("member-actions-title"),
  memberActionsClose: $("member-actions-close"),
  directOpen: $("direct-open"),
  moderate: $("moderate"),
  moderateReason: $("moderate-reason"),
  moderateSeconds: $("moderate-seconds"),
  joinForm: $("join-form"),
  joinRoom: $("join-room"),
  joinHint: $("join-hint"),
  roomTitle: $("room-title"),
  leave: $("leave"),
  messages: $("messages"),
  empty: $("empty"),
  jump: $("jump"),
  composer: $("composer"),
  text: $("text"),
  send: $("send"),
  notice: $("notice"),
  memberCount: $("member-count"),
  memberList: $("member-list"),
  login: $("login"),
  loginForm: $("login-form"),
  loginNick: $("login-nick"),
  loginError: $("login-error"),
  loginToken: $("login-token"),
};
export const JOIN_HINT = ui.joinHint.textContent;

/** What other modules do when the view changes; chat.js fills these in. */
export const hooks = {
  roomShown(room) {}, // a room became the one shown
  loadOlder(room) {}, // the reader asked for earlier messages
  memberPicked(nick, button) {}, // a member's button in the list was pressed
  deleteMessage(room, id) {}, // a moderator asked to delete a message
};

export function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function nickHue(nick) {
  let hash = 0;
  for (const ch of nick) hash = (hash * 31 + ch.codePointAt(0)) >>> 0;
  return hash % 360;
}

function formatTime(date) {
  const now = new Date();
  const sameDay = date.toDateString() === now.toDateString();
  const options = sameDay
    ? { hour: "2-digit", minute: "2-digit" }
    : { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" };
  return date.toLocaleString([], options);
}

let noticeTimer = 0;
export function notify(text) {
  ui.notice.textContent = text;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => {
    ui.notice.textContent = "";
  }, 8000);
}

const SPOKEN_STATUS = {
  idle: "Offline",
  connecting: "Connecting",
  reconnecting: "Connection lost, reconnecting",
  online: "Online",
};

export function setStatus(kind, text) {
  if (ui.status.dataset.state !== kind) ui.statusLive.textContent = SPOKEN_STATUS[kind];
  ui.status.dataset.state = kind;
  ui.statusText.textContent = text;
  ui.retryNow.hidden = kind !== "reconnecting";
}

export function showJoinHint(text, isError) {
  ui.joinHint.textContent = text;
  ui.joinHint.classList.toggle("error", isError);
  ui.joinRoom.setAttribute("aria-invalid", String(isError));
}

export function autoGrow() {
  // scrollHeight leaves out the borders, which border-box sizing counts in the height.
  const borders = ui.text.offsetHeight - ui.text.clientHeight;
  ui.text.style.height = "auto";
  ui.text.style.height = `${Math.min(ui.text.scrollHeight + borders, 160)}px`;
}

// ---- rooms ------------------------------------------------------------------------------

/** Adds a room, or with `peer` a conversation with that person, to the page. */
export function addRoom(name, peer = null) {
  const list = el("ol", "log");
  list.setAttribute("role", "log");
  list.setAttribute("aria-label", peer === null ? `Messages in ${name}` : `Messages with ${peer}`);
  list.dataset.room = name;
  list.hidden = true;
  // First in the log: older messages are fetched when this comes into view, or with its
  // button from the keyboard.
  const older = el("li", "older");
  older.hidden = true;
  const olderButton = el("button", "link-button", "Load earlier messages");
  olderButton.type = "button";
  older.append(olderButton);
  olderButton.addEventListener("click", () => hooks.loadOlder(room));
  list.append(older);
  ui.messages.append(list);

  const item = el("li");
  const button = el("button", "room");
  button.type = "button";
  button.dataset.room = name;
  if (peer !== null) button.classList.add("direct");
  const label = el("span", "room-name", peer ?? name);
  const badge = el("span", "badge");
  badge.hidden = true;
  button.append(label, badge);
  button.addEventListener("click", () => {
    // Picking a room by hand overrides a join still waiting to switch us elsewhere.
    state.joinWanted = null;
    switchRoom(name);
  });
  item.append(button);
  (peer === null ? ui.roomList : ui.directList).append(item);
  ui.directTitle.hidden = ui.directList.children.length === 0;

  const room = newRoom(name, { list, item, button, badge, older, olderButton }, peer);
  state.rooms.set(name, room);
  return room;
}

export function removeRoom(name) {
  const room = state.rooms.get(name);
  if (!room) return;
  state.rooms.delete(name);
  room.list.remove();
  room.item.remove();
  ui.directTitle.hidden = ui.directList.children.length === 0;
  if (state.current === name) {
    state.current = null;
    const next = state.rooms.keys().next();
    if (next.done) renderCurrent();
    else switchRoom(next.value);
  }
}

export function setJoined(room, joined) {
  room.joined = joined;
  room.button.classList.toggle("syncing", !joined);
  if (isCurrent(room)) renderMembers();
}

export function switchRoom(name) {
  const room = state.rooms.get(name);
  if (!room) return;
  const previous = currentRoom();
  if (previous && previous !== room) {
    previous.scrollTop = ui.messages.scrollTop;
    previous.list.hidden = true;
    previous.button.removeAttribute("aria-current");
  }
  state.current = name;
  room.list.hidden = false;
  room.button.setAttribute("aria-current", "true");
  room.button.scrollIntoView({ block: "nearest", inline: "nearest" });
  room.unread = 0;
  renderBadge(room);
  renderCurrent();
  if (room.stuck) scrollToBottom();
  else ui.messages.scrollTop = room.scrollTop;
  updateJump();
  hooks.roomShown(room);
}

export function renderCurrent() {
  const room = currentRoom();
  ui.empty.hidden = Boolean(room);
  ui.roomTitle.textContent = room ? (room.peer ?? room.name) : "No room";
  ui.roomTitle.classList.toggle("direct", Boolean(room?.direct));
  ui.leave.disabled = !room;
  ui.leave.textContent = room?.direct ? "Close" : "Leave";
  ui.text.disabled = !room;
  ui.send.disabled = !room;
  ui.text.placeholder = room ? `Message ${room.peer ?? room.name}` : "Join a room to write";
  renderMembers();
  renderTyping();
}

/** Shows the moderation controls of every room we may moderate, and only those. */
export function renderRights() {
  for (const room of state.rooms.values()) {
    room.list.classList.toggle("can-moderate", canModerate(room));
  }
  if (state.role === "operator") ui.role.textContent = "Operator";
  else ui.role.textContent = state.verified ? "Signed in" : "";
  ui.role.hidden = !ui.role.textContent;
  renderMembers();
}

/** "ann is typing…" under the current room's log. */
export function renderTyping() {
  const room = currentRoom();
  const nicks = room ? [...room.typing.keys()] : [];
  let text = "";
  if (nicks.length === 1) text = `${nicks[0]} is typing…`;
  else if (nicks.length === 2) text = `${nicks[0]} and ${nicks[1]} are typing…`;
  else if (nicks.length > 2) text = `${nicks[0]}, ${nicks[1]} and ${nicks.length - 2} more are typing…`;
  ui.typing.textContent = text;
}

export function renderMembers() {
  const room = currentRoom();
  const members = room ? [...room.members] : [];
  members.sort((a, b) => a.localeCompare(b, undefined, { sensitivity: "base" }));
  const focused = document.activeElement?.dataset?.nick;
  const items = members.map((nick) => {
    const item = el("li", "member");
    item.style.setProperty("--hue", nickHue(nick));
    if (nick === state.nick) {
      item.append(el("span", "member-name", nick), el("span", "you", "(you)"));
      return item;
    }
    // Each other member opens what can be done with them: a direct message, moderation.
    const button = el("button", "member-name", nick);
    button.type = "button";
    button.dataset.nick = nick;
    button.setAttribute("aria-label", `Actions for ${nick}`);
    button.setAttribute("aria-controls", "member-actions");
    button.setAttribute("aria-expanded", String(state.picked === nick));
    button.addEventListener("click", () => hooks.memberPicked(nick, button));
    item.append(button);
    return item;
  });
  // The server lists a few hundred members at most; the count says how many there are.
  const count = room ? Math.max(room.count ?? members.length, members.length) : 0;
  if (count > members.length) {
    const more = el("li", "member more", `and ${count - members.length} more`);
    items.push(more);
  }
  ui.memberList.replaceChildren(...items);
  // While rejoining, the list is what we knew before the drop: show it as such.
  ui.memberList.classList.toggle("stale", Boolean(room) && !room.joined);
  ui.memberCount.textContent = room ? String(count) : "";
  // A presence frame redraws the list: the member button that had the focus keeps it.
  if (focused !== undefined) {
    for (const button of ui.memberList.querySelectorAll("button")) {
      if (button.dataset.nick === focused) button.focus();
    }
  }
}

export function renderBadge(room) {
  room.badge.hidden = room.unread === 0;
  room.badge.textContent = room.unread > 99 ? "99+" : String(room.unread);
  room.badge.setAttribute("aria-label", `${room.unread} unread`);
}

// ---- the message log --------------------------------------------------------------------

export function isCurrent(room) {
  return room.name === state.current;
}

function nearBottom() {
  const box = ui.messages;
  return box.scrollHeight - box.scrollTop - box.clientHeight < STICKY_PX;
}

export function scrollToBottom() {
  ui.messages.scrollTop = ui.messages.scrollHeight;
}

export function updateJump() {
  ui.jump.hidden = nearBottom();
}

/** Called when the reader scrolls the log: whether new messages should follow. */
export function onScroll() {
  const room = currentRoom();
  if (room) room.stuck = nearBottom();
  updateJump();
  if (room) hooks.roomShown(room);
}

// Appends or inserts `node` into the room's log keeping ids in order, then follows it
// down only when the reader was already at the bottom.
export function place(room, node, id, { own = false } = {}) {
  const current = isCurrent(room);
  const follow = own || (current && room.stuck);
  const list = room.list;
  let before = null;
  if (id !== null) {
    // Pending messages stay last; a message with a smaller id than what is shown goes
    // before the first larger one of the same server run.
    // Lines without an id (events, notices) are passed over: a page of older messages or
    // the messages of a gap go above the events that came after them.
    let cursor = list.lastElementChild;
    while (cursor) {
      const isPending = cursor.classList.contains("pending");
      const sameRun = Number(cursor.dataset.generation) === room.generation;
      if (isPending || (cursor.dataset.id && sameRun && Number(cursor.dataset.id) > id)) {
        before = cursor;
      } else if (cursor.dataset.id || cursor === room.older) {
        break;
      }
      cursor = cursor.previousElementSibling;
    }
  } else if (!node.classList.contains("pending")) {
    before = list.querySelector(".pending");
  }
  list.insertBefore(node, before);
  if (current) {
    if (follow) {
      room.stuck = true;
      scrollToBottom();
    }
    updateJump();
  }
}

export function renderMessage(room, m, { own, pending }) {
  const item = el("li", "msg");
  item.setAttribute("data-testid", "message");
  item.dataset.generation = String(room.generation);
  const nick = String(m.nick ?? state.nick);
  item.style.setProperty("--hue", nickHue(nick));
  if (own) item.classList.add("own");
  if (pending) item.classList.add("pending");

  const meta = el("div", "meta");
  const who = el("span", "nick", nick);
  who.setAttribute("data-testid", "msg-nick");
  const time = el("time", "time");
  time.setAttribute("data-testid", "msg-time");
  meta.append(who, time);
  const status = el("span", "delivery");
  status.setAttribute("data-testid", "msg-status");
  if (own) meta.append(status);
  if (!room.direct) {
    // Shown by the stylesheet only in rooms we moderate (`.can-moderate`).
    const remove = el("button", "link-button delete", "Delete");
    remove.type = "button";
    remove.setAttribute("aria-label", `Delete message from ${nick}`);
    remove.addEventListener("click", () => hooks.deleteMessage(room, Number(item.dataset.id)));
    meta.append(remove);
  }
  const body = el("p", "text", String(m.text));
  body.setAttribute("data-testid", "msg-text");
  item.append(meta, body);
  setMessageMeta(item, m);
  if (own) setDelivery(item, pending ? "pending" : "sent");
  return item;
}

export function setMessageMeta(item, m) {
  const time = item.querySelector("time");
  if (typeof m.ts === "number") {
    const date = new Date(m.ts * 1000);
    time.dateTime = date.toISOString();
    time.title = date.toLocaleString();
    time.textContent = formatTime(date);
  } else {
    time.textContent = "";
  }
  if (Number.isInteger(m.id)) item.dataset.id = String(m.id);
}

export function setDelivery(item, kind, reason) {
  const status = item.querySelector(".delivery");
  item.dataset.delivery = kind;
  status.replaceChildren();
  if (kind === "pending") status.textContent = "Sending…";
  else if (kind === "sent") status.textContent = "Sent";
  else status.textContent = `Not sent: ${reason}`;
}

export function addMessage(room, m, live) {
  if (room.seen.has(m.id)) return;
  room.seen.add(m.id);
  room.lastId = Math.max(room.lastId ?? 0, m.id);
  const own = m.nick === state.nick;
  place(room, renderMessage(room, m, { own, pending: false }), m.id);
  if (live && !isCurrent(room)) {
    room.unread += 1;
    renderBadge(room);
  }
}

export function addEvent(room, text) {
  place(room, el("li", "event", text), null);
}

export function addNotice(room, text, kind) {
  const item = el("li", `notice-line ${kind}`, text);
  item.setAttribute("data-testid", "notice");
  place(room, item, null);
}
