// Rooms on the page: the room list, which room is shown, its title, members and typing.

import { canModerate, currentRoom, newRoom, state } from "./state.js";
import { el, hooks, nickHue, scrollToBottom, ui, updateJump } from "./dom.js";

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
  const count = room ? (room.count ?? members.length) : 0;
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

export function isCurrent(room) {
  return room.name === state.current;
}
