// rawchat browser client for the rawchat.v1 protocol (docs/protocol.md).
//
// Everything the network sends reaches the DOM through textContent or attributes, never as
// markup. Each room keeps the ids it has shown, so history replayed on resume or rejoin
// never shows a message twice, and a gap the server cannot fill is said out loud.
(() => {
  "use strict";

  const PROTOCOL = "rawchat.v1";
  const NICK_KEY = "rawchat.nick";
  const DEFAULT_ROOM = "lobby";
  const MAX_NICK = 32;
  const ROOM_RE = /^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$/;
  // Full-jitter exponential backoff: spreads a crowd of clients over the whole window
  // after a server restart instead of having them all knock at once.
  const BACKOFF_BASE_MS = 500;
  const BACKOFF_CAP_MS = 10000;
  // A connection that stayed up this long counts as healthy: the next drop starts the
  // backoff from the beginning. Shorter ones keep growing it, so a server that accepts and
  // then drops us is not hammered.
  const HEALTHY_MS = 5000;
  // After a drop the server may not have noticed our old connection yet, so our own ghost
  // can hold our nick for a moment: retry it a few times before settling for a variant.
  const GHOST_RETRIES = 3;
  const STICKY_PX = 48;

  const $ = (id) => document.getElementById(id);
  const ui = {
    app: $("app"),
    status: $("status"),
    statusText: $("status-text"),
    statusLive: $("status-live"),
    retryNow: $("retry-now"),
    nickForm: $("nick-form"),
    nick: $("nick"),
    roomList: $("room-list"),
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
  };
  const JOIN_HINT = ui.joinHint.textContent;

  const state = {
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
    ws: null,
    welcomed: false,
    welcomedAt: 0,
    connection: 0, // counts sockets, so a message knows which connection it was sent on
    attempt: 0,
    retryTimer: 0,
    countdownTimer: 0,
    retryAt: 0,
    ghostRetries: 0,
    variant: 1,
    rooms: new Map(), // name -> room, in the order joined
    current: null,
    joinWanted: null, // room to switch to once its `joined` arrives
    focusComposer: false,
  };
  const cidPrefix = Math.random().toString(36).slice(2, 8);
  let cidCounter = 0;

  // ---- small helpers --------------------------------------------------------------------

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function codePoints(text) {
    return Array.from(text).length;
  }

  function validNick(nick) {
    return nick.length > 0 && codePoints(nick) <= MAX_NICK;
  }

  function loadNick() {
    try {
      return localStorage.getItem(NICK_KEY) || "";
    } catch {
      return "";
    }
  }

  function saveNick(nick) {
    try {
      localStorage.setItem(NICK_KEY, nick);
    } catch {
      // Storage can be off (private mode); the nick then lasts as long as the page.
    }
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
  function notify(text) {
    ui.notice.textContent = text;
    clearTimeout(noticeTimer);
    noticeTimer = setTimeout(() => {
      ui.notice.textContent = "";
    }, 8000);
  }

  // ---- connection -----------------------------------------------------------------------

  function socketUrl() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return `${scheme}//${location.host}/ws`;
  }

  const SPOKEN_STATUS = {
    idle: "Offline",
    connecting: "Connecting",
    reconnecting: "Connection lost, reconnecting",
    online: "Online",
  };

  function setStatus(kind, text) {
    if (ui.status.dataset.state !== kind) ui.statusLive.textContent = SPOKEN_STATUS[kind];
    ui.status.dataset.state = kind;
    ui.statusText.textContent = text;
    ui.retryNow.hidden = kind !== "reconnecting";
  }

  function connect() {
    clearTimeout(state.retryTimer);
    clearInterval(state.countdownTimer);
    if (state.ws) return;
    let ws;
    try {
      ws = new WebSocket(socketUrl(), PROTOCOL);
    } catch {
      scheduleReconnect();
      return;
    }
    state.ws = ws;
    state.welcomed = false;
    state.connection += 1;
    setStatus("connecting", state.epoch === null ? "Connecting…" : "Reconnecting…");

    ws.addEventListener("open", () => {
      if (state.ws !== ws) return;
      if (ws.protocol !== PROTOCOL) {
        notify("This server does not speak rawchat.v1.");
        ws.close(1000);
        return;
      }
      sendHello();
    });
    ws.addEventListener("message", (event) => {
      if (state.ws !== ws || typeof event.data !== "string") return;
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return;
      }
      if (message && typeof message === "object") dispatch(message);
    });
    ws.addEventListener("close", (event) => {
      if (state.ws !== ws) return;
      state.ws = null;
      if (event.code === 1009 || event.code === 1007) {
        // The server closed over something we sent: sending it again after the reconnect
        // would only close the next connection too, so it fails here and waits for the user.
        failOutstanding(`the server refused it (close ${event.code})`);
      }
      const wasHealthy = state.welcomed && Date.now() - state.welcomedAt >= HEALTHY_MS;
      state.welcomed = false;
      if (wasHealthy) state.attempt = 0;
      for (const room of state.rooms.values()) setJoined(room, false);
      if (state.paused) setStatus("idle", "Offline");
      else scheduleReconnect();
    });
  }

  function scheduleReconnect() {
    clearTimeout(state.retryTimer);
    clearInterval(state.countdownTimer);
    const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** state.attempt);
    state.attempt += 1;
    const delay = Math.random() * ceiling;
    state.retryAt = Date.now() + delay;
    const tick = () => {
      const seconds = Math.max(1, Math.ceil((state.retryAt - Date.now()) / 1000));
      setStatus("reconnecting", `Reconnecting in ${seconds} s`);
    };
    tick();
    state.countdownTimer = setInterval(tick, 250);
    state.retryTimer = setTimeout(connect, delay);
  }

  function send(message) {
    if (!state.ws || state.ws.readyState !== WebSocket.OPEN) return false;
    state.ws.send(JSON.stringify(message));
    return true;
  }

  function sendHello() {
    // The first hello asks for the lobby; later ones rejoin exactly what we were in, which
    // may be nothing if the user left every room.
    const rooms = state.epoch === null ? [DEFAULT_ROOM] : [...state.rooms.keys()];
    const hello = { type: "hello", nick: state.nick || state.wantedNick, rooms };
    const resume = {};
    for (const room of state.rooms.values()) {
      if (room.lastId !== null) resume[room.name] = room.lastId;
    }
    if (state.epoch !== null && Object.keys(resume).length) {
      hello.resume = resume;
      hello.epoch = state.epoch;
    }
    send(hello);
  }

  function dispatch(message) {
    switch (message.type) {
      case "welcome":
        return onWelcome(message);
      case "joined":
        return onJoined(message);
      case "left":
        return onLeft(message);
      case "msg":
        return onMsg(message);
      case "presence":
        return onPresence(message);
      case "error":
        return onError(message);
      default:
        return undefined; // newer servers may say more than we understand
    }
  }

  // ---- server messages ------------------------------------------------------------------

  function onWelcome(message) {
    const restarted = state.epoch !== null && message.epoch !== state.epoch;
    state.epoch = String(message.epoch);
    state.welcomed = true;
    state.welcomedAt = Date.now();
    state.ghostRetries = 0;
    state.variant = 1;
    state.nick = String(message.nick);
    state.welcomedNick = state.nick;
    state.nickBefore = null;
    ui.nick.value = state.nick;
    ui.nickForm.classList.remove("dirty");
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
        for (const item of room.list.querySelectorAll(".msg:not(.pending)")) {
          item.classList.add("stale");
        }
        addNotice(room, "The server restarted: earlier history is gone.", "restart");
        room.justRestarted = true;
      }
    }
    setStatus("online", "Online");
    if (state.usingVariant) {
      state.usingVariant = false;
      notify(`“${state.wantedNick}” is taken, so you are “${state.nick}”.`);
    }
  }

  function onJoined(message) {
    const name = String(message.room);
    let room = state.rooms.get(name);
    if (!room) room = addRoom(name);
    const resuming = room.lastId !== null;
    const history = Array.isArray(message.history) ? message.history : [];
    if (resuming && message.truncated) {
      addNotice(room, "Some messages from while you were away are no longer available.", "gap");
    } else if (message.truncated && !room.justRestarted) {
      addEvent(room, "Earlier messages are no longer available.");
    }
    room.justRestarted = false;
    const unclaimed = [...room.pending.values()].filter((p) => p.sentOn !== null && !p.failed);
    for (const m of history) {
      // Our own message may have reached the server just before the connection broke,
      // with its acknowledgement lost: history shows it without a cid, so match it by
      // author and text rather than sending it a second time.
      const match =
        m.nick === state.nick && unclaimed.find((p) => p.text === m.text && !p.claimed);
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
    room.members = new Set(Array.isArray(message.members) ? message.members.map(String) : []);
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
  }

  function onLeft(message) {
    removeRoom(String(message.room));
  }

  function onMsg(message) {
    const room = state.rooms.get(message.room);
    if (!room || !Number.isInteger(message.id)) return;
    const pending = message.cid !== undefined ? room.pending.get(message.cid) : undefined;
    if (pending) {
      acknowledge(room, pending, message);
    } else {
      addMessage(room, message, true);
    }
  }

  function onPresence(message) {
    const room = state.rooms.get(message.room);
    const nick = String(message.nick);
    if (message.event === "nick") {
      const old = String(message.old);
      if (old === state.nick || old === state.nickBefore) {
        state.nick = nick;
        state.welcomedNick = nick;
        state.nickBefore = null;
        if (document.activeElement !== ui.nick) ui.nick.value = nick;
      }
      if (!room) return;
      room.members.delete(old);
      room.members.add(nick);
      addEvent(room, `${old} is now known as ${nick}`);
    } else if (room && message.event === "join") {
      room.members.add(nick);
      addEvent(room, `${nick} joined`);
    } else if (room && message.event === "leave") {
      room.members.delete(nick);
      addEvent(room, `${nick} left`);
    }
    if (room && room.name === state.current) renderMembers();
  }

  const ERROR_TEXT = {
    bad_nick: "That nickname is not allowed.",
    nick_taken: "That nickname is taken.",
    bad_room: "Room names are 1–64 letters, digits, _ - or ., not starting with a dot.",
    too_many_rooms: "You are in as many rooms as the server allows.",
    not_in_room: "You are not in that room.",
    text_too_long: "Message too long.",
    empty_text: "Message is empty.",
    rate_limited: "Slow down: you are sending too fast.",
  };

  function onError(message) {
    const code = String(message.code);
    const text = ERROR_TEXT[code] || String(message.message || code);
    if (message.cid !== undefined) {
      for (const room of state.rooms.values()) {
        const pending = room.pending.get(message.cid);
        if (pending) {
          failPending(room, pending, text);
          return;
        }
      }
    } else if (code === "rate_limited" && failOldestOutstanding(text)) {
      // A limit enforced before the message is read cannot echo its cid. The server
      // answers in order, so the refused one is the oldest still waiting on this connection.
      return;
    }
    if (!state.welcomed) {
      onHelloRefused(code, text);
      return;
    }
    if (code === "bad_nick" || code === "nick_taken") {
      // Answer to a nick change; nothing changed on the server.
      if (state.nickBefore !== null) state.nick = state.nickBefore;
      state.nickBefore = null;
      ui.nick.value = state.nick;
      ui.nickForm.classList.remove("dirty");
      notify(text);
      return;
    }
    if (code === "bad_room" || code === "too_many_rooms") {
      state.joinWanted = null;
      showJoinHint(text, true);
      return;
    }
    notify(text);
  }

  function encodedSize(message) {
    return new TextEncoder().encode(JSON.stringify(message)).length;
  }

  function failOutstanding(reason) {
    for (const room of state.rooms.values()) {
      for (const pending of room.pending.values()) {
        if (pending.sentOn === state.connection && !pending.failed) {
          failPending(room, pending, reason);
        }
      }
    }
  }

  function failOldestOutstanding(reason) {
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

  function onHelloRefused(code, text) {
    if (code === "too_many_rooms" && state.rooms.size > 1) {
      // The server now allows fewer rooms than we were in: keep the first ones.
      const keep = Math.max(1, Math.min(state.maxRooms, state.rooms.size) - 1);
      for (const name of [...state.rooms.keys()].slice(keep)) removeRoom(name);
      notify("The server now allows fewer rooms: you left some.");
      sendHello();
      return;
    }
    if (code !== "nick_taken" && code !== "bad_nick") {
      // Anything else would leave us waiting for a welcome that never comes: start over.
      notify(text);
      if (state.ws) state.ws.close(1000);
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
      if (state.ws) state.ws.close(1000);
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

  // ---- rooms ----------------------------------------------------------------------------

  function addRoom(name) {
    const list = el("ol", "log");
    list.setAttribute("role", "log");
    list.setAttribute("aria-label", `Messages in ${name}`);
    list.dataset.room = name;
    list.hidden = true;
    ui.messages.append(list);

    const item = el("li");
    const button = el("button", "room");
    button.type = "button";
    button.dataset.room = name;
    const label = el("span", "room-name", name);
    const badge = el("span", "badge");
    badge.hidden = true;
    button.append(label, badge);
    button.addEventListener("click", () => {
      // Picking a room by hand overrides a join still waiting to switch us elsewhere.
      state.joinWanted = null;
      switchRoom(name);
    });
    item.append(button);
    ui.roomList.append(item);

    const room = {
      name,
      list,
      item,
      button,
      badge,
      joined: false,
      lastId: null,
      seen: new Set(),
      generation: 0,
      justRestarted: false,
      members: new Set(),
      pending: new Map(),
      unread: 0,
      stuck: true,
      scrollTop: 0,
    };
    state.rooms.set(name, room);
    return room;
  }

  function removeRoom(name) {
    const room = state.rooms.get(name);
    if (!room) return;
    state.rooms.delete(name);
    room.list.remove();
    room.item.remove();
    if (state.current === name) {
      state.current = null;
      const next = state.rooms.keys().next();
      if (next.done) renderCurrent();
      else switchRoom(next.value);
    }
  }

  function setJoined(room, joined) {
    room.joined = joined;
    room.button.classList.toggle("syncing", !joined);
    if (isCurrent(room)) renderMembers();
  }

  function switchRoom(name) {
    const room = state.rooms.get(name);
    if (!room) return;
    const previous = state.rooms.get(state.current);
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
  }

  function renderCurrent() {
    const room = state.rooms.get(state.current);
    ui.empty.hidden = Boolean(room);
    ui.roomTitle.textContent = room ? room.name : "No room";
    ui.leave.disabled = !room;
    ui.text.disabled = !room;
    ui.send.disabled = !room;
    ui.text.placeholder = room ? `Message ${room.name}` : "Join a room to write";
    renderMembers();
  }

  function renderMembers() {
    const room = state.rooms.get(state.current);
    const members = room ? [...room.members] : [];
    members.sort((a, b) => a.localeCompare(b, undefined, { sensitivity: "base" }));
    const items = members.map((nick) => {
      const item = el("li", "member");
      item.style.setProperty("--hue", nickHue(nick));
      item.append(el("span", "member-name", nick));
      if (nick === state.nick) item.append(el("span", "you", "(you)"));
      return item;
    });
    ui.memberList.replaceChildren(...items);
    // While rejoining, the list is what we knew before the drop: show it as such.
    ui.memberList.classList.toggle("stale", Boolean(room) && !room.joined);
    ui.memberCount.textContent = room ? String(members.length) : "";
  }

  function renderBadge(room) {
    room.badge.hidden = room.unread === 0;
    room.badge.textContent = room.unread > 99 ? "99+" : String(room.unread);
    room.badge.setAttribute("aria-label", `${room.unread} unread`);
  }

  function showJoinHint(text, isError) {
    ui.joinHint.textContent = text;
    ui.joinHint.classList.toggle("error", isError);
    ui.joinRoom.setAttribute("aria-invalid", String(isError));
  }

  // ---- the message log ------------------------------------------------------------------

  function isCurrent(room) {
    return room.name === state.current;
  }

  function nearBottom() {
    const box = ui.messages;
    return box.scrollHeight - box.scrollTop - box.clientHeight < STICKY_PX;
  }

  function scrollToBottom() {
    ui.messages.scrollTop = ui.messages.scrollHeight;
  }

  // Appends or inserts `node` into the room's log keeping ids in order, then follows it
  // down only when the reader was already at the bottom.
  function place(room, node, id, { own = false } = {}) {
    const current = isCurrent(room);
    const follow = own || (current && room.stuck);
    const list = room.list;
    let before = null;
    if (id !== null) {
      // Pending messages stay last; a message with a smaller id than what is shown goes
      // before the first larger one of the same server run.
      let cursor = list.lastElementChild;
      while (cursor) {
        const cursorId = Number(cursor.dataset.id);
        const isPending = cursor.classList.contains("pending");
        const sameRun = Number(cursor.dataset.generation) === room.generation;
        if (isPending || (cursor.dataset.id && sameRun && cursorId > id)) {
          before = cursor;
          cursor = cursor.previousElementSibling;
        } else {
          break;
        }
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

  function renderMessage(room, m, { own, pending }) {
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
    const body = el("p", "text", String(m.text));
    body.setAttribute("data-testid", "msg-text");
    item.append(meta, body);
    setMessageMeta(item, m);
    if (own) setDelivery(item, pending ? "pending" : "sent");
    return item;
  }

  function setMessageMeta(item, m) {
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

  function setDelivery(item, kind, reason) {
    const status = item.querySelector(".delivery");
    item.dataset.delivery = kind;
    status.replaceChildren();
    if (kind === "pending") status.textContent = "Sending…";
    else if (kind === "sent") status.textContent = "Sent";
    else status.textContent = `Not sent: ${reason}`;
  }

  function addMessage(room, m, live) {
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

  function addEvent(room, text) {
    place(room, el("li", "event", text), null);
  }

  function addNotice(room, text, kind) {
    const item = el("li", `notice-line ${kind}`, text);
    item.setAttribute("data-testid", "notice");
    place(room, item, null);
  }

  // ---- sending --------------------------------------------------------------------------

  function submitText() {
    const room = state.rooms.get(state.current);
    const text = ui.text.value.trim();
    if (!room || !text) return;
    if (codePoints(text) > state.maxText) {
      notify(`Message too long: at most ${state.maxText} characters.`);
      return;
    }
    const cid = `${cidPrefix}-${cidCounter + 1}`;
    const size = encodedSize({ type: "msg", room: room.name, text, cid });
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
    cidCounter += 1;
    const pending = {
      cid,
      seq: cidCounter,
      text,
      sentOn: null,
      claimed: false,
      failed: false,
    };
    pending.item = renderMessage(room, { text }, { own: true, pending: true });
    room.pending.set(pending.cid, pending);
    place(room, pending.item, null, { own: true });
    trySend(room, pending);
  }

  function trySend(room, pending) {
    if (!state.welcomed || !room.joined) return;
    if (send({ type: "msg", room: room.name, text: pending.text, cid: pending.cid })) {
      pending.sentOn = state.connection;
    }
  }

  function flushPending(room) {
    for (const pending of room.pending.values()) {
      if (pending.sentOn !== state.connection && !pending.failed) trySend(room, pending);
    }
  }

  function acknowledge(room, pending, m) {
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

  function failPending(room, pending, reason) {
    // Stays in `pending` so that an acknowledgement arriving after all (see the guess in
    // onError) still turns it into a delivered message instead of a second copy.
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

  // ---- user interface wiring ------------------------------------------------------------

  function updateJump() {
    ui.jump.hidden = nearBottom();
  }

  function autoGrow() {
    // scrollHeight leaves out the borders, which border-box sizing counts in the height.
    const borders = ui.text.offsetHeight - ui.text.clientHeight;
    ui.text.style.height = "auto";
    ui.text.style.height = `${Math.min(ui.text.scrollHeight + borders, 160)}px`;
  }

  function askForNick(error) {
    state.paused = true;
    clearTimeout(state.retryTimer);
    clearInterval(state.countdownTimer);
    if (state.ws) state.ws.close(1000);
    else setStatus("idle", "Offline");
    ui.loginError.textContent = error || "";
    ui.loginNick.value = state.wantedNick;
    ui.login.hidden = false;
    ui.app.inert = true;
    ui.loginNick.focus();
  }

  function start(nick) {
    state.wantedNick = nick;
    state.nick = "";
    state.paused = false;
    ui.nick.value = nick;
    ui.login.hidden = true;
    ui.app.inert = false;
    if (state.ws) state.ws.close(1000);
    else connect();
    state.focusComposer = true;
  }

  ui.loginForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const nick = ui.loginNick.value.trim();
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
    if (state.welcomed && send({ type: "nick", nick })) {
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
    if (!send({ type: "join", room: name })) {
      showJoinHint("Not connected: try again once online.", true);
      state.joinWanted = null;
    }
  });

  ui.leave.addEventListener("click", () => {
    const name = state.current;
    if (!name) return;
    // Offline, the server has already forgotten us; just stop asking to rejoin.
    if (!state.welcomed || !send({ type: "leave", room: name })) removeRoom(name);
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
  ui.text.addEventListener("input", autoGrow);

  ui.messages.addEventListener("scroll", () => {
    const room = state.rooms.get(state.current);
    if (room) room.stuck = nearBottom();
    updateJump();
  });
  ui.jump.addEventListener("click", () => {
    const room = state.rooms.get(state.current);
    if (room) room.stuck = true;
    scrollToBottom();
    ui.text.focus();
  });

  ui.retryNow.addEventListener("click", connect);
  window.addEventListener("online", () => {
    if (!state.ws && state.wantedNick) connect();
  });

  renderCurrent();
  const remembered = loadNick().trim();
  if (validNick(remembered)) start(remembered);
  else askForNick();
})();
