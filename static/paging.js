// Older messages on demand. `joined` brings only the newest page of a room; the rest is
// asked for with `history` requests (docs/protocol.md, "Pages of history"):
//   - when the reader comes near the top of the log, or presses "Load earlier messages",
//     the page before the oldest message shown;
//   - after a resume whose missed messages did not fit one page, the pages between what
//     was shown before the drop and the newest page (the gap), without being asked.
// One request per room is in flight at a time; answers come in order, so `room.request`
// says what an answer is for. Messages go through addMessage, which drops ids already
// shown, and the reader's view stays on the message it was on.

import { link } from "./connection.js";
import { currentRoom, state } from "./state.js";
import { el, ui } from "./dom.js";
import { addMessage } from "./log.js";
import { isCurrent } from "./view.js";

const PAGE = 50;
// Close enough to the top to fetch the next page before the reader gets there.
const NEAR_TOP_PX = 200;

/** The id of the oldest message of this server run shown in the room, or null. */
function oldestShownId(room) {
  const first = room.list.querySelector(`.msg[data-id][data-generation="${room.generation}"]`);
  return first ? Number(first.dataset.id) : null;
}

function ask(room, kind, before) {
  if (room.request || !state.welcomed || !room.joined) return;
  const request = { type: "history", room: room.name, limit: PAGE };
  if (before !== null) request.before = before;
  if (link.send(request)) room.request = kind;
  renderOlder(room);
}

export function renderOlder(room) {
  room.older.hidden = !room.more;
  room.olderButton.textContent =
    room.request === "older" ? "Loading earlier messages…" : "Load earlier messages";
}

/** What a `joined` means for paging; `resumedFrom` is the last id shown before, or null. */
export function afterJoined(room, message, resumedFrom) {
  const history = Array.isArray(message.history) ? message.history : [];
  const first = history.find((m) => Number.isInteger(m?.id));
  if (resumedFrom === null) {
    room.more = message.more === true;
    room.gap = null;
  } else if (message.more === true && first && first.id > resumedFrom) {
    room.gap = { after: resumedFrom, before: first.id };
  }
  renderOlder(room);
  next(room);
}

/**
 * Asks for the next page the room needs, if no request is in flight: the gap first, then
 * the page before the oldest shown when the reader is near the top (or `asked` for it).
 */
export function next(room = currentRoom(), asked = false) {
  if (!room || room.request) return;
  if (room.gap) {
    ask(room, "gap", room.gap.before);
  } else if (room.more && isCurrent(room) && (asked || ui.messages.scrollTop < NEAR_TOP_PX)) {
    ask(room, "older", oldestShownId(room));
  }
}

export function loadOlder(room) {
  next(room, true);
}

// Inserting above what the reader looks at would push it down: move the view by as much
// as was inserted, unless the reader follows the newest messages.
function keepingView(room, insert) {
  const box = ui.messages;
  if (!isCurrent(room) || room.stuck) {
    insert();
    return;
  }
  const height = box.scrollHeight;
  const top = box.scrollTop;
  insert();
  box.scrollTop = top + (box.scrollHeight - height);
}

export function onHistory(message) {
  const room = state.rooms.get(message.room);
  if (!room || !room.request) return;
  const kind = room.request;
  room.request = null;
  const messages = (Array.isArray(message.messages) ? message.messages : []).filter((m) =>
    Number.isInteger(m?.id),
  );
  const more = message.more === true && messages.length > 0;
  keepingView(room, () => {
    for (const m of messages) addMessage(room, m, false);
  });
  const lowest = messages.length ? Math.min(...messages.map((m) => m.id)) : null;
  if (kind === "gap") {
    if (more && lowest > room.gap.after) {
      room.gap.before = lowest;
    } else {
      // Back at what was shown before the drop, or nothing older is kept at all.
      room.gap = null;
      if (!more) room.more = false;
    }
  } else {
    room.more = more;
  }
  if (!room.more && room.truncatedTop) {
    room.truncatedTop = false;
    const line = el("li", "event", "Earlier messages are no longer available.");
    room.older.after(line);
  }
  renderOlder(room);
  next(room);
}
