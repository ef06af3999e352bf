// What the page knows, free of the DOM and the network: the session, the rooms, and the
// small rules (nick length, room names, sizes) the page checks before asking the server.

export const DEFAULT_ROOM = "lobby";
export const MAX_NICK = 32;
export const ROOM_RE = /^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$/;
const NICK_KEY = "rawchat.nick";
const TOKEN_KEY = "rawchat.token";

export const state = {
  wantedNick: "", // what the user asked for
  nick: "", // what the server accepted, or the variant we are about to offer
  welcomedNick: "", // nick of the last welcome: the one our own ghost may still hold
  nickBefore: null, // set while a nick change awaits the server's verdict
  usingVariant: false,
  paused: false, // no nick the server accepts: stop reconnecting until the user picks one
  epoch: null, // epoch of the last welcome: a different one means the server restarted
  maxText: Infinity,
  maxBytes: Infinity, // largest whole JSON message the server reads, in UTF-8 bytes
  maxRooms: Infinity,
  welcomed: false,
  welcomedAt: 0,
  connection: 0, // counts sockets, so a message knows which connection it was sent on
  ghostRetries: 0,
  variant: 1,
  rooms: new Map(), // name -> room, in the order joined
  current: null,
  joinWanted: null, // room to switch to once its `joined` arrives
  focusComposer: false,
  token: null, // a signed token for our nick, sent in hello
  role: "guest", // from welcome: guest, user or operator
  verified: false, // whether the server checked our nick against the token
  picked: null, // the member whose actions are open
};

const cidPrefix = Math.random().toString(36).slice(2, 8);
let cidCounter = 0;

/** The cid the next message would get, and its sequence number; see takeCid. */
export function peekCid() {
  return { cid: `${cidPrefix}-${cidCounter + 1}`, seq: cidCounter + 1 };
}

export function takeCid() {
  cidCounter += 1;
}

export function codePoints(text) {
  return Array.from(text).length;
}

export function validNick(nick) {
  return nick.length > 0 && codePoints(nick) <= MAX_NICK;
}

export function encodedSize(message) {
  return new TextEncoder().encode(JSON.stringify(message)).length;
}

export function loadNick() {
  try {
    return localStorage.getItem(NICK_KEY) || "";
  } catch {
    return "";
  }
}

export function saveNick(nick) {
  try {
    localStorage.setItem(NICK_KEY, nick);
  } catch {
    // Storage can be off (private mode); the nick then lasts as long as the page.
  }
}

/**
 * The token kept for this tab (a token is a password: it is not written to localStorage,
 * which every tab and every later visit would read).
 */
export function loadToken() {
  try {
    return sessionStorage.getItem(TOKEN_KEY);
  } catch {
    return null;
  }
}

export function saveToken(token) {
  try {
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    // Without storage the token lasts as long as the page.
  }
}

/** The nick a token is for (its `sub`), read without checking: only the server can. */
export function tokenNick(token) {
  try {
    const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const bytes = Uint8Array.from(atob(payload), (c) => c.charCodeAt(0));
    const sub = JSON.parse(new TextDecoder().decode(bytes)).sub;
    return typeof sub === "string" ? sub.trim() : "";
  } catch {
    return "";
  }
}

/** Whether two nicks are the same user's (the server also ignores compatibility forms). */
export function sameNick(a, b) {
  return a.normalize("NFKC").toLowerCase() === b.normalize("NFKC").toLowerCase();
}

/** Whether we may kick, mute, ban and delete in `room`. */
export function canModerate(room) {
  return !room.direct && (state.role === "operator" || room.owned);
}

/** A room's data; `nodes` are its parts of the page, made by the view. */
export function newRoom(name, nodes, peer = null) {
  return {
    name,
    ...nodes,
    direct: peer !== null, // a conversation with one person, not a room
    peer, // that person's nick
    owned: false, // whether we are one of the room's owners
    typing: new Map(), // nick -> timer: who is typing in the room
    typingSentAt: 0,
    joined: false,
    lastId: null,
    seen: new Set(),
    generation: 0,
    justRestarted: false,
    members: new Set(),
    count: null, // members in the room, as the server last said (members may list fewer)
    refreshing: false, // a `join` asks for the member list again
    pending: new Map(),
    unread: 0,
    stuck: true,
    scrollTop: 0,
    more: false, // whether the server keeps messages older than the oldest shown
    gap: null, // {after, before}: ids between which a resume left messages to fetch
    request: null, // "older" or "gap": the history request in flight
    truncatedTop: false, // say "no longer available" once the oldest page is shown
  };
}

export function currentRoom() {
  return state.rooms.get(state.current);
}
