// Socket layer: the /chat-run connection, acknowledged emits and the connection state.
// `io` is the global from /static/vendor/socket.io.min.js (a classic script loaded first).

/**
 * Every server → client event of a session (docs/protocol.md §5), `resumed` aside; the last
 * two are about the session itself and carry no seq.
 */
export const SESSION_EVENTS = [
  "run.queued", "run.started", "message.delta", "reasoning.delta", "reasoning.available",
  "tool.started", "tool.completed", "run.completed", "run.failed", "run.cancelled",
  "usage.updated", "compression.started", "compression.completed", "context.chunking",
  "abort.started", "abort.completed", "approval.request", "approval.responded",
  "session.deleted", "session.renamed",
];

const AUTH_FAILED = "Authentication failed";

/**
 * One authenticated connection. Callbacks:
 *   onState(state)          "connected" | "reconnecting" | "disconnected"
 *   onConnect()             after the initial connect and after every reconnect
 *   onAuthFailed()          the token was refused (no automatic retry then)
 *   onEvent(name, data)     a session event (SESSION_EVENTS), or "resumed"
 */
export class ChatSocket {
  constructor(token, handlers) {
    this.handlers = handlers;
    this.closed = false;
    if (typeof window.io !== "function") {
      throw new Error("socket.io client missing (/static/vendor/socket.io.min.js)");
    }
    this.socket = window.io("/chat-run", {
      auth: { token },
      transports: ["websocket", "polling"],
      reconnectionDelay: 500,
      reconnectionDelayMax: 5000,
      forceNew: true, // a fresh manager per sign-in: nothing shared with a closed connection
    });
    const s = this.socket;
    handlers.onState("reconnecting"); // "connecting": the first attempt is on its way
    s.on("connect", () => {
      handlers.onState("connected");
      handlers.onConnect();
    });
    s.on("disconnect", (reason) => {
      if (this.closed) return;
      if (reason === "io server disconnect") {
        // The server closed this socket on purpose; Socket.IO does not retry that by itself.
        handlers.onState("disconnected");
        setTimeout(() => { if (!this.closed && !s.connected) s.connect(); }, 2000);
      } else {
        handlers.onState("reconnecting");
      }
    });
    s.on("connect_error", (err) => {
      if (this.closed) return;
      if (err && err.message === AUTH_FAILED) {
        handlers.onState("disconnected");
        handlers.onAuthFailed();
      } else {
        handlers.onState(navigator.onLine === false ? "disconnected" : "reconnecting");
      }
    });
    s.io.on("reconnect_attempt", () => { if (!this.closed) handlers.onState("reconnecting"); });
    s.io.on("reconnect_failed", () => { if (!this.closed) handlers.onState("disconnected"); });
    for (const name of SESSION_EVENTS) s.on(name, (data) => handlers.onEvent(name, data));
    s.on("resumed", (data) => handlers.onEvent("resumed", data));
    // Forwarded upstream events we do not know by name still carry a seq we must account for.
    s.onAny((name, data) => {
      if (name !== "resumed" && !SESSION_EVENTS.includes(name)) handlers.onEvent(name, data);
    });
  }

  get connected() {
    return !this.closed && this.socket.connected;
  }

  /** Ask for a new attempt now (for example when the browser is back online). */
  reconnect() {
    if (!this.closed && !this.socket.connected) this.socket.connect();
  }

  /**
   * Emit with an acknowledgement; resolves to the ack ({ok: true, ...} or {ok: false, error}).
   * Never rejects: no connection and no answer in time are errors with codes `offline` and
   * `timeout` (a timed-out event may still have been applied by the server).
   */
  emit(event, payload, timeoutMs = 15000) {
    return new Promise((resolve) => {
      if (!this.connected) {
        resolve({ ok: false, error: { code: "offline", message: "Not connected to the server." } });
        return;
      }
      this.socket.timeout(timeoutMs).emit(event, payload, (err, ack) => {
        if (err) {
          resolve({ ok: false, error: { code: "timeout", message: "The server did not answer in time." } });
        } else if (!ack || typeof ack !== "object") {
          resolve({ ok: false, error: { code: "internal", message: "Unexpected answer from the server." } });
        } else {
          resolve(ack);
        }
      });
    });
  }

  close() {
    this.closed = true;
    this.socket.offAny();
    this.socket.removeAllListeners();
    this.socket.disconnect();
  }
}
