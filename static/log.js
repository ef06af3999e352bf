// A room's log: messages in id order, events and notices, following the newest message
// only when the reader is at the bottom. Each room keeps the ids it has shown, so history
// replayed on resume, rejoin or paging never shows a message twice.

import { el, formatTime, hooks, nickHue, scrollToBottom, updateJump } from "./dom.js";
import { state } from "./state.js";
import { isCurrent, renderBadge } from "./view.js";

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
