// The WebSocket to the server: opening it, reconnecting with backoff, sending JSON.
// What the messages mean is protocol.js's business; this module only moves them.

export const PROTOCOL = "rawchat.v1";
// Full-jitter exponential backoff: spreads a crowd of clients over the whole window
// after a server restart instead of having them all knock at once.
const BACKOFF_BASE_MS = 500;
const BACKOFF_CAP_MS = 10000;
// A connection that stayed up this long counts as healthy: the next drop starts the
// backoff from the beginning. Shorter ones keep growing it, so a server that accepts and
// then drops us is not hammered.
const HEALTHY_MS = 5000;

function socketUrl() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/ws`;
}

/**
 * One logical connection, made of as many sockets as it takes. The owner sets the
 * callbacks: `onOpen()` (send the hello), `onMessage(object)`, `onClose(event)` (after which
 * it reconnects unless `paused()` says not to), `onStatus(kind, text)` and
 * `onWrongProtocol()`.
 */
export class Connection {
  constructor() {
    this.ws = null;
    this.attempt = 0;
    this.retryTimer = 0;
    this.countdownTimer = 0;
    this.retryAt = 0;
    this.healthySince = null; // set once the server welcomed this socket
    this.onOpen = () => {};
    this.onMessage = () => {};
    this.onClose = () => {};
    this.onStatus = () => {};
    this.onWrongProtocol = () => {};
    this.paused = () => false;
    this.reconnecting = false; // whether the next "connecting" is a reconnection
  }

  get open() {
    return this.ws !== null && this.ws.readyState === WebSocket.OPEN;
  }

  /** Called on welcome: from now on a drop counts against this socket's health. */
  welcomed() {
    this.healthySince = Date.now();
    this.reconnecting = true;
  }

  connect() {
    this.stopTimers();
    if (this.ws) return;
    let ws;
    try {
      ws = new WebSocket(socketUrl(), PROTOCOL);
    } catch {
      this.scheduleReconnect();
      return;
    }
    this.ws = ws;
    this.healthySince = null;
    this.onStatus("connecting", this.reconnecting ? "Reconnecting…" : "Connecting…");

    ws.addEventListener("open", () => {
      if (this.ws !== ws) return;
      if (ws.protocol !== PROTOCOL) {
        this.onWrongProtocol();
        ws.close(1000);
        return;
      }
      this.onOpen();
    });
    ws.addEventListener("message", (event) => {
      if (this.ws !== ws || typeof event.data !== "string") return;
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return;
      }
      if (message && typeof message === "object") this.onMessage(message);
    });
    ws.addEventListener("close", (event) => {
      if (this.ws !== ws) return;
      this.ws = null;
      const healthy = this.healthySince !== null && Date.now() - this.healthySince >= HEALTHY_MS;
      this.healthySince = null;
      if (healthy) this.attempt = 0;
      this.onClose(event);
      if (this.paused()) this.onStatus("idle", "Offline");
      else this.scheduleReconnect();
    });
  }

  stopTimers() {
    clearTimeout(this.retryTimer);
    clearInterval(this.countdownTimer);
  }

  scheduleReconnect() {
    this.stopTimers();
    const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** this.attempt);
    this.attempt += 1;
    const delay = Math.random() * ceiling;
    this.retryAt = Date.now() + delay;
    const tick = () => {
      const seconds = Math.max(1, Math.ceil((this.retryAt - Date.now()) / 1000));
      this.onStatus("reconnecting", `Reconnecting in ${seconds} s`);
    };
    tick();
    this.countdownTimer = setInterval(tick, 250);
    this.retryTimer = setTimeout(() => this.connect(), delay);
  }

  /** Sends `message` as JSON; false when there is no open socket to send it on. */
  send(message) {
    if (!this.open) return false;
    this.ws.send(JSON.stringify(message));
    return true;
  }

  /** Closes the socket (it reconnects unless paused); true if there was one. */
  close() {
    if (!this.ws) return false;
    this.ws.close(1000);
    return true;
  }
}

export const link = new Connection();
