// rawchat's browser page (docs/protocol.md, rawchat.v1): this module wires the page's
// controls to the protocol. connection.js moves frames, protocol.js reads them,
// state.js holds what the page knows and view.js draws it.

import { link } from "./connection.js";
import { closeActions, deleteMessage, pickMember, refreshActions, wireActions } from "./moderation.js";
import { submitText } from "./outbox.js";
import { loadOlder, next } from "./paging.js";
import { ERROR_TEXT, askForNick, dispatch, onClose, sendHello, start } from "./protocol.js";
import {
  MAX_NICK,
  ROOM_RE,
  currentRoom,
  loadNick,
  loadToken,
  saveNick,
  saveToken,
  state,
  tokenNick,
  validNick,
} from "./state.js";
import { typed } from "./typing.js";
import {
  autoGrow,
  hooks,
  JOIN_HINT,
  notify,
  onScroll,
  scrollToBottom,
  setStatus,
  showJoinHint,
  ui,
} from "./dom.js";
import { removeRoom, renderCurrent, renderMembers, switchRoom } from "./view.js";

link.onOpen = sendHello;
link.onMessage = dispatch;
link.onClose = onClose;
link.onStatus = setStatus;
link.onWrongProtocol = () => notify("This server does not speak rawchat.v1.");
link.paused = () => state.paused;
hooks.roomShown = (room) => {
  next(room);
  refreshActions();
};
hooks.loadOlder = loadOlder;
hooks.memberPicked = pickMember;
hooks.deleteMessage = deleteMessage;
wireActions();

// A token is for one nick: pasting it fills the nickname in when none is written yet.
ui.loginToken.addEventListener("input", () => {
  const nick = tokenNick(ui.loginToken.value.trim());
  if (nick && !ui.loginNick.value.trim()) ui.loginNick.value = nick;
});
ui.loginForm.addEventListener("submit", (event) => {
  event.preventDefault();
  state.token = ui.loginToken.value.trim() || null;
  saveToken(state.token);
  const nick = ui.loginNick.value.trim() || tokenNick(state.token ?? "");
  if (!validNick(nick)) {
    ui.loginError.textContent = `A nickname is 1 to ${MAX_NICK} characters.`;
    return;
  }
  saveNick(nick);
  start(nick);
});

ui.nick.addEventListener("input", () => {
  ui.nickForm.classList.toggle("dirty", ui.nick.value.trim() !== state.nick);
});
ui.nickForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const nick = ui.nick.value.trim();
  ui.nickForm.classList.remove("dirty");
  if (!validNick(nick)) {
    ui.nick.value = state.nick;
    notify(`A nickname is 1 to ${MAX_NICK} characters.`);
    return;
  }
  if (nick === state.nick) return;
  state.wantedNick = nick;
  saveNick(nick);
  if (state.welcomed && link.send({ type: "nick", nick })) {
    // The server confirms a rename only through presence in our rooms, and refuses it
    // with an error: until either comes, assume it worked (it is all we will hear when
    // we are in no room) and remember what to go back to.
    state.nickBefore = state.nick;
    state.nick = nick;
    renderMembers();
  } else {
    state.nick = "";
    state.welcomedNick = "";
  }
});
ui.nick.addEventListener("keydown", (event) => {
  if (event.key === "Escape") {
    ui.nick.value = state.nick;
    ui.nickForm.classList.remove("dirty");
  }
});

ui.joinRoom.addEventListener("input", () => showJoinHint(JOIN_HINT, false));
ui.joinForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const name = ui.joinRoom.value.trim();
  if (!ROOM_RE.test(name)) {
    showJoinHint(ERROR_TEXT.bad_room, true);
    return;
  }
  ui.joinRoom.value = "";
  if (state.rooms.has(name)) {
    switchRoom(name);
    return;
  }
  state.joinWanted = name;
  if (!link.send({ type: "join", room: name })) {
    showJoinHint("Not connected: try again once online.", true);
    state.joinWanted = null;
  }
});

ui.leave.addEventListener("click", () => {
  const name = state.current;
  if (!name) return;
  closeActions();
  // A conversation is only on this page: closing it tells nobody.
  if (currentRoom().direct) {
    removeRoom(name);
    return;
  }
  // Offline, the server has already forgotten us; just stop asking to rejoin.
  if (!state.welcomed || !link.send({ type: "leave", room: name })) removeRoom(name);
});

ui.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  submitText();
});
ui.text.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    submitText();
  }
});
ui.text.addEventListener("input", () => {
  autoGrow();
  if (ui.text.value.trim()) typed();
});

ui.messages.addEventListener("scroll", onScroll);
ui.jump.addEventListener("click", () => {
  const room = currentRoom();
  if (room) room.stuck = true;
  scrollToBottom();
  ui.text.focus();
});

ui.retryNow.addEventListener("click", () => link.connect());
window.addEventListener("online", () => {
  if (!link.ws && state.wantedNick) link.connect();
});

/**
 * A sign-in link (`?token=…`) signs in as the token's nick. The token leaves the address
 * at once, so that it is not kept in the history, bookmarked or shared with the page.
 */
function tokenFromAddress() {
  const url = new URL(location.href);
  const token = url.searchParams.get("token");
  if (token === null) return null;
  url.searchParams.delete("token");
  history.replaceState(history.state, "", url.pathname + url.search + url.hash);
  return token.trim() || null;
}

renderCurrent();
const linked = tokenFromAddress();
state.token = linked ?? loadToken();
if (linked) saveToken(linked);
const remembered = (tokenNick(state.token ?? "") || loadNick()).trim();
if (validNick(remembered)) {
  saveNick(remembered);
  start(remembered);
} else {
  askForNick();
}
