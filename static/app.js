// Chatrun browser client: the controller. It wires the REST layer (js/api.js), the socket layer
// (js/socket.js), the state store (js/store.js) and the renderer (js/render.js) together and
// holds the user's actions. Plain ES modules, no build step.

import * as api from "./js/api.js";
import { ChatSocket } from "./js/socket.js";
import * as store from "./js/store.js";
import { renderChat, renderSessions, renderConnection, renderUpstream, showError } from "./js/render.js";
import { $, newSessionId, newQueueId } from "./js/util.js";

const TOKEN_KEY = "chatrun_token";
const IDENTIFIER = /^[A-Za-z0-9._:-]{1,128}$/;
const RUN_ACK_TIMEOUT_MS = 20000;
const RUN_MAX_TRIES = 5;
const UPSTREAM_RECHECK_MS = 15000;

// The store owns all client state; this module reads it and changes it only through store actions.
const { state } = store;

let socket = null; // ChatSocket while signed in

/** UI-only state (not part of the store): inline rename, delete confirmation, narrow sidebar. */
const ui = { renaming: null, confirmDelete: null, confirmTimer: 0, sidebarOpen: false, loadingMore: false };

// Read-only, small, for tests and debugging: window.chatrun.state.{sessionId, lastAppliedSeq, …}
window.chatrun = Object.freeze({ get state() { return store.debugState(); } });

// ------------------------------------------------------------------------- rendering --

const dirty = { chat: false, sessions: false };
let frame = 0;
let frameTimer = 0;

/** Re-render parts at the next frame (a timer too, in case frames are paused). */
function invalidate(...parts) {
  for (const part of parts) dirty[part] = true;
  if (frame || frameTimer) return;
  frame = requestAnimationFrame(flush);
  frameTimer = setTimeout(flush, 120);
}

function flush() {
  cancelAnimationFrame(frame);
  clearTimeout(frameTimer);
  frame = 0;
  frameTimer = 0;
  if (dirty.sessions && !ui.renaming) { // never under the user's fingers while renaming
    dirty.sessions = false;
    renderSessions(state.sessions, state.current, ui, sidebarHandlers, Boolean(state.nextCursor));
  }
  if (dirty.chat) {
    dirty.chat = false;
    const v = state.current ? state.views.get(state.current) || null : null;
    renderChat(v, currentSession(), { cancelQueued });
    const title = currentSession() && currentSession().title;
    document.title = title ? `${title} · Chatrun` : "Chatrun";
  }
}

function flushNow() {
  dirty.chat = true;
  flush();
}

const currentSession = () => state.sessions.find((s) => s.id === state.current) || null;

function setConnection(value) {
  store.setConnection(value);
  renderConnection(value, value === "reconnecting" && !state.everConnected ? "Connecting…" : undefined);
}

// ------------------------------------------------------------------------ socket events --

function connectSocket() {
  socket = new ChatSocket(state.token, {
    onState: setConnection,
    onConnect() {
      if (state.current) resume(state.current); // with last_seq when we have a view: a replay
      pumpRuns(); // messages typed while offline, or whose ack was lost: same queue_id, safe
      refreshSessions();
      checkUpstream(); // it may have gone away (or come back) while we were disconnected
    },
    onAuthFailed() {
      signOut("That token was refused by the server. Check it and sign in again.");
    },
    onEvent,
  });
}

function onEvent(name, data) {
  if (name === "resumed") {
    const v = store.applyResumed(data);
    if (v && v.id === state.current) invalidate("chat", "sessions");
    return;
  }
  if (!data || typeof data !== "object" || typeof data.session_id !== "string") return;
  const v = state.views.get(data.session_id);
  if (!v) return; // a session this tab does not show
  if (typeof data.seq !== "number") {
    if (store.applyUnnumbered(v, name)) invalidate("chat");
    return;
  }
  switch (store.receive(v, data.seq)) {
    case "wait": // a snapshot is on its way and will include this event
    case "skip": // applied already (replay after live events), or older than the snapshot
      return;
    case "gap":
      onGap(v);
      return;
    default:
  }
  const out = store.applyEvent(v, name, data);
  if (out.snapshot) requestSnapshot(v);
  if (out.sessions) scheduleSessionsRefresh();
  if (v.id === state.current) invalidate("chat", ...(out.sessions ? ["sessions"] : []));
  if (name === "run.failed" && data.code === "upstream_unavailable") checkUpstream();
}

/** Events are missing before the one that came: ask for them (replay, or a snapshot). */
function onGap(v) {
  if (store.noteGap(v)) resume(v.id);
}

/** Rebuild a view from a snapshot: events are dropped until `resumed` comes (it covers them). */
function requestSnapshot(v) {
  store.awaitSnapshot(v);
  if (v.id === state.current) resume(v.id);
}

/**
 * `resume` the session: with last_seq = lastAppliedSeq when this tab has a view of it (replay of
 * what it missed), without on first load (snapshot).
 */
async function resume(sessionId) {
  if (!socket || !socket.connected) return; // `connect` resumes the open session
  const v = store.view(sessionId);
  const ack = await socket.emit("resume", store.resumeSent(v));
  if (store.resumeAnswered(v, ack)) onGap(v); // an event was dropped for good: close the gap
  if (ack.ok) return;
  if (ack.error.code === "offline") return;
  if (ack.error.code === "timeout" && socket && socket.connected && sessionId === state.current) {
    resume(sessionId);
    return;
  }
  if (sessionId === state.current) {
    store.setLoadError(v, `This chat cannot be opened: ${ack.error.message}`);
    showError(`Could not load this chat: ${ack.error.message}`);
    invalidate("chat");
  }
}

// ------------------------------------------------------------------------------ runs --

let pumping = false;

/**
 * Send the store's outbox in order. Each `run` waits for its ack before the next goes, so queued
 * messages keep the order they were typed in. No answer (timeout, lost connection): the same
 * `run` with the same queue_id is sent again — the server ignores a duplicate queue_id.
 */
async function pumpRuns() {
  if (pumping) return;
  pumping = true;
  try {
    for (let next = store.nextRun(); next && socket && socket.connected; next = store.nextRun()) {
      const { sessionId, item, v } = next;
      store.runEmitted(item);
      const ack = await socket.emit("run", { session_id: sessionId, input: item.text, queue_id: item.queue_id }, RUN_ACK_TIMEOUT_MS);
      if (ack.ok) {
        store.applyRunAck(v, item, ack);
        if (!state.sessions.some((s) => s.id === sessionId)) refreshSessions();
        if (sessionId === state.current) invalidate("chat", "sessions");
        continue;
      }
      const code = ack.error.code;
      if ((code === "offline" || code === "timeout") && item.tries < RUN_MAX_TRIES) {
        if (code === "offline") {
          store.runOffline(item);
          break; // sent again on `connect`
        }
        continue; // no answer in time: the same run again (idempotent)
      }
      // Refused (nothing was changed by the server), or never answered: give the text back.
      store.runRefused(v, item);
      restoreDraft(sessionId, item.text);
      showError(`Not sent: ${ack.error.message}`);
      invalidate("chat");
      if (code === "upstream_unavailable") checkUpstream();
    }
  } finally {
    pumping = false;
  }
}

function restoreDraft(sessionId, text) {
  const box = $("composer");
  if (sessionId !== state.current) return;
  box.value = box.value.trim() ? `${text}\n\n${box.value}` : text;
  autosize();
}

function send() {
  const box = $("composer");
  const text = box.value;
  if (!text.trim()) return;
  if (!state.current) newChat();
  store.enqueueRun(state.current, newQueueId(), text);
  box.value = "";
  autosize();
  showError("");
  invalidate("chat");
  const transcript = $("transcript");
  requestAnimationFrame(() => { transcript.scrollTop = transcript.scrollHeight; });
  if (!socket || !socket.connected) showError("Offline: the message is sent when the connection is back.");
  pumpRuns();
}

async function cancelQueued(queueId) {
  const sessionId = state.current;
  const v = store.view(sessionId);
  const step = store.cancelStarted(v, queueId);
  if (step !== "pending") invalidate("chat");
  if (step !== "send") return; // removed here (it never left this tab), or already cancelling
  const ack = socket ? await socket.emit("cancel_queued_run", { session_id: sessionId, queue_id: queueId })
    : { ok: false, error: { message: "Not connected." } };
  store.cancelAnswered(v, queueId, ack);
  if (!ack.ok) showError(`Could not cancel: ${ack.error.message}`);
  invalidate("chat");
}

async function stop() {
  const sessionId = state.current;
  const v = sessionId && state.views.get(sessionId);
  if (!store.abortRequested(v)) return; // "stopping…" until run.cancelled / abort.completed
  invalidate("chat");
  const ack = socket ? await socket.emit("abort", { session_id: sessionId })
    : { ok: false, error: { message: "Not connected." } };
  store.abortAnswered(v, ack);
  if (!ack.ok) showError(`Could not stop: ${ack.error.message}`);
  invalidate("chat");
}

// -------------------------------------------------------------------------- sessions --

let sessionsTimer = 0;
let sessionsRequest = 0;

function scheduleSessionsRefresh(delay = 300) {
  clearTimeout(sessionsTimer);
  sessionsTimer = setTimeout(refreshSessions, delay);
}

/** Reload the list (as many as are shown, so "load more" pages stay). */
async function refreshSessions() {
  if (!state.token) return;
  const request = ++sessionsRequest;
  const limit = Math.min(200, Math.max(50, state.sessions.length));
  try {
    const data = await api.listSessions({ limit });
    if (request !== sessionsRequest || !state.token) return;
    store.setSessions(data.sessions, data.next_cursor);
    invalidate("sessions", "chat");
  } catch (err) {
    if (err.status === 401) signOut("Your token is no longer accepted. Sign in again.");
    else if (err.status !== 0) showError(`Could not load your chats: ${err.message}`);
  }
}

async function loadMoreSessions() {
  if (!state.nextCursor || ui.loadingMore) return;
  ui.loadingMore = true;
  $("more-sessions").disabled = true;
  try {
    const data = await api.listSessions({ limit: 50, before: state.nextCursor });
    store.appendSessions(data.sessions, data.next_cursor);
    sessionsRequest += 1; // a refresh started before this page must not drop it
    invalidate("sessions");
  } catch (err) {
    showError(`Could not load more chats: ${err.message}`);
  } finally {
    ui.loadingMore = false;
    $("more-sessions").disabled = false;
  }
}

function openSession(sessionId) {
  if (!IDENTIFIER.test(sessionId)) return;
  closeSidebar();
  if (state.current === sessionId) return;
  const previous = state.current;
  if (previous && socket && socket.connected) socket.emit("leave", { session_id: previous });
  const v = store.openView(sessionId);
  if (location.hash.slice(1) !== encodeURIComponent(sessionId)) {
    history.pushState(null, "", `#${encodeURIComponent(sessionId)}`);
  }
  showError("");
  if (!v.fresh) resume(sessionId); // snapshot the first time, replay of what it missed after
  invalidate("chat", "sessions");
  requestAnimationFrame(() => { $("transcript").scrollTop = $("transcript").scrollHeight; });
  if (window.matchMedia("(hover: hover)").matches) $("composer").focus({ preventScroll: true });
}

/** A new session id; the session is created on the server by its first `run`. */
function newChat() {
  const id = newSessionId();
  store.freshView(id); // nothing exists yet: every event of it is new
  openSession(id);
}

function leaveToEmpty() {
  store.closeView();
  history.replaceState(null, "", `${location.pathname}${location.search}`);
  invalidate("chat", "sessions");
}

const sidebarHandlers = {
  startRename(id) {
    ui.confirmDelete = null;
    ui.renaming = { id };
    renderSessions(state.sessions, state.current, ui, sidebarHandlers, Boolean(state.nextCursor));
  },
  async finishRename(id, title) {
    const session = state.sessions.find((s) => s.id === id);
    if (title && session && title !== session.title) {
      try {
        const data = await api.renameSession(id, title);
        // a list requested before the rename answered must not bring the old title back
        sessionsRequest += 1;
        const saved = (data && data.session && data.session.title) || title;
        store.setSessionTitle(id, saved);
      } catch (err) {
        showError(`Could not rename: ${err.message}`);
      }
    }
    ui.renaming = null;
    invalidate("sessions", "chat");
  },
  askDelete(id) {
    ui.confirmDelete = id;
    clearTimeout(ui.confirmTimer);
    ui.confirmTimer = setTimeout(() => { ui.confirmDelete = null; invalidate("sessions"); }, 4000);
    invalidate("sessions");
  },
  async deleteSession(id) {
    ui.confirmDelete = null;
    clearTimeout(ui.confirmTimer);
    try {
      await api.deleteSession(id); // the server aborts a running run first
    } catch (err) {
      showError(`Could not delete: ${err.message}`);
      invalidate("sessions");
      return;
    }
    const wasOpen = store.forgetSession(id);
    if (socket && socket.connected) socket.emit("leave", { session_id: id });
    if (wasOpen) leaveToEmpty();
    invalidate("sessions");
    scheduleSessionsRefresh(0);
  },
};

async function loadEarlier() {
  const v = state.current && state.views.get(state.current);
  const first = v && v.messages.find((m) => m.id !== null);
  if (!v || !first) return;
  const button = $("load-earlier");
  button.disabled = true;
  try {
    const data = await api.listMessages(v.id, { limit: 100, before: first.id });
    const t = $("transcript");
    const fromBottom = t.scrollHeight - t.scrollTop;
    store.prependOlder(v, data.messages || [], data.has_more);
    flushNow();
    t.scrollTop = t.scrollHeight - fromBottom; // keep the reader where they were
  } catch (err) {
    showError(`Could not load earlier messages: ${err.message}`);
  } finally {
    button.disabled = false;
  }
}

// --------------------------------------------------------------------- sign-in flow --

async function signIn(token, { saved = false } = {}) {
  $("signin-error").hidden = true;
  $("sign-in").disabled = true;
  api.setToken(token);
  let me;
  try {
    me = await api.me();
  } catch (err) {
    api.setToken("");
    if (err.status === 401) {
      localStorage.removeItem(TOKEN_KEY);
      showSignIn(saved ? "Your saved token is no longer accepted. Sign in again." : "That token was refused. Check it and try again.");
    } else {
      showSignIn(`Cannot reach the server (${err.message}) Try again in a moment.`);
      if (saved) $("token").value = token;
    }
    return;
  } finally {
    $("sign-in").disabled = false;
  }
  localStorage.setItem(TOKEN_KEY, token);
  store.signedIn(token, me.user);
  showUpstream(me.upstream);
  $("user-name").textContent = me.user && me.user.name ? me.user.name : "";
  $("token").value = "";
  $("signin").hidden = true;
  $("app").hidden = false;
  const fromHash = hashSession();
  if (fromHash) openSession(fromHash);
  else invalidate("chat", "sessions");
  refreshSessions();
  connectSocket();
}

function showSignIn(message) {
  $("app").hidden = true;
  $("signin").hidden = false;
  const error = $("signin-error");
  error.textContent = message || "";
  error.hidden = !message;
  $("token").focus();
}

function signOut(message) {
  localStorage.removeItem(TOKEN_KEY);
  if (socket) socket.close();
  socket = null;
  api.setToken("");
  clearTimeout(upstreamTimer);
  store.resetState();
  renderUpstream(null);
  setConnection("disconnected");
  showError("");
  showSignIn(message);
}

// -------------------------------------------------------------------------- upstream --

let upstreamTimer = 0;

/** Show (or hide) the notice for the upstream state GET /api/me reported. */
function showUpstream(upstream) {
  clearTimeout(upstreamTimer);
  store.setUpstream(upstream);
  const notice = store.upstreamNotice();
  renderUpstream(notice);
  // While it cannot be reached, look again now and then: the notice goes once it is back.
  if (notice) upstreamTimer = setTimeout(checkUpstream, UPSTREAM_RECHECK_MS);
}

/** Ask the server again how the upstream is (reconnect, a run that could not reach it, …). */
async function checkUpstream() {
  if (!state.token) return;
  const token = state.token;
  try {
    const me = await api.me();
    if (state.token === token) showUpstream(me.upstream);
  } catch (err) {
    if (err.status === 401 && state.token === token) signOut("Your token is no longer accepted. Sign in again.");
    // Server unreachable: the connection state says so; the notice stays as it was.
  }
}

function hashSession() {
  try {
    const id = decodeURIComponent(location.hash.slice(1));
    return IDENTIFIER.test(id) ? id : null;
  } catch {
    return null;
  }
}

// ---------------------------------------------------------------------------- wiring --

function autosize() {
  const box = $("composer");
  box.style.height = "auto"; // CSSOM, allowed by the CSP (unlike style attributes)
  box.style.height = `${Math.min(box.scrollHeight + 2, Math.round(window.innerHeight * 0.4))}px`;
}

function openSidebar() {
  ui.sidebarOpen = true;
  $("app").classList.add("sidebar-open");
  $("backdrop").hidden = false;
  $("sidebar-toggle").setAttribute("aria-expanded", "true");
}

function closeSidebar() {
  ui.sidebarOpen = false;
  $("app").classList.remove("sidebar-open");
  $("backdrop").hidden = true;
  $("sidebar-toggle").setAttribute("aria-expanded", "false");
}

function bind() {
  $("signin-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const token = $("token").value.trim();
    if (token) signIn(token);
  });
  $("sign-out").addEventListener("click", () => signOut(""));
  $("new-chat").addEventListener("click", newChat);
  $("more-sessions").addEventListener("click", loadMoreSessions);
  $("load-earlier").addEventListener("click", loadEarlier);
  $("composer-form").addEventListener("submit", (e) => { e.preventDefault(); send(); });
  $("composer").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing && e.keyCode !== 229) {
      e.preventDefault();
      send();
    }
  });
  $("composer").addEventListener("input", autosize);
  $("stop").addEventListener("click", stop);
  $("error-dismiss").addEventListener("click", () => showError(""));
  $("sidebar-toggle").addEventListener("click", () => (ui.sidebarOpen ? closeSidebar() : openSidebar()));
  $("sidebar-close").addEventListener("click", closeSidebar);
  $("backdrop").addEventListener("click", closeSidebar);
  document.addEventListener("keydown", (e) => { if (e.key === "Escape" && ui.sidebarOpen) closeSidebar(); });

  // Session links are plain #id links: the hash is the open session (back/forward work too).
  window.addEventListener("hashchange", () => {
    if (!state.token) return;
    const id = hashSession();
    if (id) openSession(id);
    else if (state.current) leaveToEmpty();
  });

  // Load the next page of sessions when the end of the list scrolls into view.
  if ("IntersectionObserver" in window) {
    new IntersectionObserver((entries) => {
      if (entries.some((e) => e.isIntersecting)) loadMoreSessions();
    }, { root: $("sessions-scroll"), rootMargin: "120px" }).observe($("more-sessions"));
  }

  // A tab coming back to the foreground catches up (replay of what it missed, if anything).
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState !== "visible" || !state.token) return;
    if (socket && !socket.connected) socket.reconnect();
    const v = state.current && state.views.get(state.current);
    if (v && !v.fresh && v.resumesInFlight === 0) resume(state.current);
    scheduleSessionsRefresh(0);
    if (state.upstream && state.upstream.state === "unreachable") checkUpstream();
  });
  window.addEventListener("online", () => { if (socket) socket.reconnect(); });
  window.addEventListener("offline", () => { if (socket) setConnection("disconnected"); });
  setInterval(() => invalidate("sessions"), 60000); // relative times
}

bind();
setConnection("disconnected");
const saved = localStorage.getItem(TOKEN_KEY);
if (saved) signIn(saved, { saved: true });
else showSignIn("");
