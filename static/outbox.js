// Messages the user wrote: shown at once as "Sending…", sent when the room is joined,
// matched to the server's acknowledgement by cid, and never sent twice.

import { link } from "./connection.js";
import { codePoints, currentRoom, encodedSize, peekCid, state, takeCid } from "./state.js";
import { autoGrow, el, notify, ui } from "./dom.js";
import { place, renderMessage, setDelivery, setMessageMeta } from "./log.js";

/** The `msg` for `text`: to a room, or in a conversation to its peer. */
function outgoing(room, text, cid) {
  const where = room.direct ? { to: room.peer } : { room: room.name };
  return { type: "msg", ...where, text, cid };
}

export function submitText() {
  const room = currentRoom();
  const text = ui.text.value.trim();
  if (!room || !text) return;
  if (codePoints(text) > state.maxText) {
    notify(`Message too long: at most ${state.maxText} characters.`);
    return;
  }
  const { cid, seq } = peekCid();
  const size = encodedSize(outgoing(room, text, cid));
  if (size > state.maxBytes) {
    // Sent anyway, it would make the server close the connection (1009): refuse it here
    // and leave the text in the composer to be shortened.
    notify(
      `Not sent: the message is ${size} bytes once encoded and the server accepts at most ${state.maxBytes}.`,
    );
    return;
  }
  ui.text.value = "";
  autoGrow();
  takeCid();
  // The message clears our typing notice on every page: the next keystroke tells again.
  room.typingSentAt = 0;
  const pending = { cid, seq, text, sentOn: null, claimed: false, failed: false };
  pending.item = renderMessage(room, { text }, { own: true, pending: true });
  room.pending.set(pending.cid, pending);
  place(room, pending.item, null, { own: true });
  trySend(room, pending);
}

function trySend(room, pending) {
  if (!state.welcomed || !room.joined) return;
  if (link.send(outgoing(room, pending.text, pending.cid))) {
    pending.sentOn = state.connection;
  }
}

export function flushPending(room) {
  for (const pending of room.pending.values()) {
    if (pending.sentOn !== state.connection && !pending.failed) trySend(room, pending);
  }
}

export function acknowledge(room, pending, m) {
  room.pending.delete(pending.cid);
  const item = pending.item;
  if (room.seen.has(m.id)) {
    item.remove();
    return;
  }
  room.seen.add(m.id);
  room.lastId = Math.max(room.lastId ?? 0, m.id);
  item.classList.remove("pending", "failed");
  item.dataset.generation = String(room.generation);
  setMessageMeta(item, m);
  setDelivery(item, "sent");
  // Messages from others may have been given ids between sending and acknowledging.
  item.remove();
  place(room, item, m.id);
}

export function failPending(room, pending, reason) {
  // Stays in `pending` so that an acknowledgement arriving after all (see the guess in
  // failOldestOutstanding) still turns it into a delivered message instead of a second copy.
  pending.failed = true;
  const item = pending.item;
  item.classList.remove("pending");
  item.classList.add("failed");
  setDelivery(item, "failed", reason);
  const retry = el("button", "link-button", "Retry");
  retry.type = "button";
  retry.addEventListener("click", () => {
    room.pending.delete(pending.cid);
    item.remove();
    ui.text.value = pending.text;
    ui.text.focus();
    autoGrow();
  });
  item.querySelector(".delivery").append(" ", retry);
}

/** Fails every message still waiting for an answer on the current connection. */
export function failOutstanding(reason) {
  for (const room of state.rooms.values()) {
    for (const pending of room.pending.values()) {
      if (pending.sentOn === state.connection && !pending.failed) {
        failPending(room, pending, reason);
      }
    }
  }
}

/** Fails the oldest message waiting on this connection; false if there is none. */
export function failOldestOutstanding(reason) {
  let oldest = null;
  let oldestRoom = null;
  for (const room of state.rooms.values()) {
    for (const pending of room.pending.values()) {
      const waiting = pending.sentOn === state.connection && !pending.failed;
      if (waiting && (oldest === null || pending.seq < oldest.seq)) {
        oldest = pending;
        oldestRoom = room;
      }
    }
  }
  if (oldest === null) return false;
  failPending(oldestRoom, oldest, reason);
  return true;
}

/** Fails the message with `cid`, in whichever room it waits; false if none has it. */
export function failByCid(cid, reason) {
  for (const room of state.rooms.values()) {
    const pending = room.pending.get(cid);
    if (pending) {
      failPending(room, pending, reason);
      return true;
    }
  }
  return false;
}
