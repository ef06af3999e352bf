// The page's fixed parts: the elements index.html holds, and small helpers to make and
// update nodes. Everything the network sends reaches the DOM through textContent or
// attributes, never as markup.

import { currentRoom } from "./state.js";

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

export function nickHue(nick) {
  let hash = 0;
  for (const ch of nick) hash = (hash * 31 + ch.codePointAt(0)) >>> 0;
  return hash % 360;
}

export function formatTime(date) {
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
