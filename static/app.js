// Chatrun browser client: the controller. It wires the REST layer (js/api.js), the socket layer
// (js/socket.js), the state store (js/store.js) and the renderer (js/render.js) together and
// holds the user's actions. Plain ES modules, no build step.

import * as api from "./js/api.js";
import { ChatSocket } from "./js/socket.js";
import * as store from "./js/store.js";
import {
  renderChat, renderSessions, renderConnection, renderUpstream, showError as renderError, showNotice,
  announce, focusByKey, focusLost,
} from "./js/render.js";
import { $, newSessionId, newQueueId } from "./js/util.js";
import { chatListKey, keepTabInside } from "./js/keys.js";

const TOKEN_KEY = "chatrun_token";
const IDENTIFIER = /^[A-Za-z0-9._:-]{1,128}$/;
const RUN_ACK_TIMEOUT_MS = 20000;
const RUN_MAX_TRIES = 5;
const UPSTREAM_RECHECK_MS = 15000;

// The store owns all client state; this module reads it and changes it only through store actions.
const { state } = store;

let socket = null; // ChatSocket while signed in

/**
 * UI-only state (not part of the store): inline rename, delete confirmation, narrow sidebar,
 * the chat list's Tab stop (`rovingKey`), the error banner's kind, renames waiting for the
 * server, and the ids this tab is renaming or deleting itself (no "elsewhere" notice for them).
 */
const ui = {
  renaming: null, confirmDelete: null, confirmTimer: 0, sidebarOpen: false, sidebarOpener: null,
  loadingMore: false, rovingKey: null, errorKind: "", pendingRenames: new Map(), ownChanges: new Set(),
};

/** The error banner; `kind` "network" clears itself once the connection is back. */
function showError(message, kind = "") {
  ui.errorKind = message ? kind : "";
  renderError(message);
}

/** Touch screens: Enter makes a new line and the Send button sends. */
const coarsePointer = window.matchMedia("(pointer: coarse)");
const narrowScreen = window.matchMedia("(max-width: 760px)");

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
    const chat = document.querySelector("main.chat");
    const hadFocus = chat.contains(document.activeElement) && document.activeElement !== $("composer");
    renderChat(v, currentSession(), chatHandlers);
    // A focused button that went away (Stop after the run ended, a cancelled queued message):
    // focus goes to the message box, never to the page itself.
    if (hadFocus && focusLost()) $("composer").focus({ preventScroll: true });
    const title = currentSession() && currentSession().title;
    document.title = title ? `${title} · Chatrun` : "Chatrun";
  }
}

const chatHandlers = {
  cancelQueued: (queueId) => cancelQueued(queueId),
  retry: (runId) => retry(runId),
  /** Retry is offered on the latest answer of the chat when its run failed. */
  canRetry(m) {
    const v = state.current && state.views.get(state.current);
    if (!v || v.working || m.role !== "assistant" || !["failed", "interrupted"].includes(m.status)) return false;
    const last = [...v.messages].reverse().find((x) => x.role === "assistant");
    return last === m && Boolean(store.retryText(v, m.run_id));
  },
};

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
    async onConnect() {
      if (ui.errorKind === "network") showError("");
      retryRenames(); // renames that could not reach the server
      refreshSessions();
      checkUpstream(); // it may have gone away (or come back) while we were disconnected
      // with last_seq when we have a view: a replay. Answered before any message typed
      // offline goes out, so a chat deleted meanwhile is known before it could be recreated.
      if (state.current) await resume(state.current);
      pumpRuns(); // messages typed while offline, or whose ack was lost: same queue_id, safe
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
    if (v && v.gone) {
      sessionGone(v.id, "This chat was deleted while this tab was away.");
      return;
    }
    if (v && v.id === state.current) invalidate("chat", "sessions");
    return;
  }
  if (!data || typeof data !== "object" || typeof data.session_id !== "string") return;
  if (name === "session.deleted") {
    const own = ui.ownChanges.has(data.session_id);
    const { known, title } = store.sessionDeleted(data.session_id);
    if (known) sessionGone(data.session_id, own ? "" : `The chat “${title || "Untitled chat"}” was deleted in another tab.`);
    return;
  }
  if (name === "session.renamed") {
    const { changed, before } = store.sessionRenamed(data.session_id, data.title);
    ui.pendingRenames.delete(data.session_id);
    if (changed && !ui.ownChanges.has(data.session_id)) {
      showNotice(`The chat “${before || "Untitled chat"}” was renamed to “${data.title}” in another tab.`);
    }
    invalidate("sessions", "chat");
    return;
  }
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
  if (out.ended && v.id === state.current) announceEnd(v, out.ended, data);
  if (out.snapshot) requestSnapshot(v);
  if (out.sessions) scheduleSessionsRefresh();
  if (v.id === state.current) invalidate("chat", ...(out.sessions ? ["sessions"] : []));
  if (name === "run.failed" && data.code === "upstream_unavailable") checkUpstream();
}

/** One short announcement when an answer ends (the transcript is not a live region). */
function announceEnd(v, ended, data) {
  if (ended === "complete") announce("Answer complete.");
  else if (ended === "aborted") announce("Answer stopped. The text so far was kept.");
  else if (ended === "interrupted") announce("The answer was interrupted. The text so far was kept.");
  else {
    const size = store.SIZE_CODES.has(data.code) ? " The message is too large for the model." : "";
    announce(`The answer failed.${size} ${typeof data.error === "string" ? data.error : ""}`.trim());
  }
}

/**
 * A chat is gone (deleted here, in another tab, or while away): it leaves the list and, when
 * it was open, the page goes back to an empty chat. `message` says so (none for our own).
 */
function sessionGone(sessionId, message) {
  const wasOpen = state.current === sessionId;
  store.forgetSession(sessionId);
  if (socket && socket.connected) socket.emit("leave", { session_id: sessionId });
  if (wasOpen) leaveToEmpty(); // a draft stays in the box: sending it starts a new chat
  if (message) showNotice(message);
  invalidate("sessions", "chat");
  scheduleSessionsRefresh(0);
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
  if (!text.trim()) {
    composerNote(text ? "Only spaces: type a message to send." : "Type a message to send.");
    box.focus();
    return;
  }
  composerNote("");
  if (!state.current || store.isDeleted(state.current)) newChat();
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

/** A short note under the message box (an empty message); spoken politely. */
function composerNote(message) {
  $("composer-note").textContent = message;
  $("composer").setAttribute("aria-invalid", message ? "true" : "false");
}

/** Retry a failed answer: its question again, as a new run. */
function retry(runId) {
  const v = state.current && state.views.get(state.current);
  const text = store.retryText(v, runId);
  if (!text) return;
  store.enqueueRun(v.id, newQueueId(), text);
  showError("");
  invalidate("chat");
  if (!socket || !socket.connected) showError("Offline: the message is sent when the connection is back.", "network");
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
  const fromDrawer = ui.sidebarOpen;
  closeSidebar({ restoreFocus: fromDrawer });
  if (store.isDeleted(sessionId)) { // a link or history entry of a chat that was deleted
    showNotice("That chat was deleted.");
    if (state.current === sessionId) leaveToEmpty();
    else history.replaceState(null, "", `${location.pathname}${location.search}`);
    return;
  }
  if (state.current === sessionId) return;
  showNotice("");
  ui.rovingKey = null; // the chat list's Tab stop is the open chat
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
  if (!fromDrawer && window.matchMedia("(hover: hover)").matches) $("composer").focus({ preventScroll: true });
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

function renderSessionsNow() {
  dirty.sessions = false;
  renderSessions(state.sessions, state.current, ui, sidebarHandlers, Boolean(state.nextCursor));
}

/** Focus one cell of the chat list (`<id>:open|rename|delete`) and make it the Tab stop. */
function focusSessionCell(key) {
  ui.rovingKey = key;
  renderSessionsNow();
  return focusByKey($("sessions"), key);
}

/** After a chat left the list: the next chat, else the previous, else "New chat". */
function focusAfterRemoval(neighbours) {
  for (const id of neighbours) {
    if (id && state.sessions.some((s) => s.id === id) && focusSessionCell(`${id}:open`)) return;
  }
  $("new-chat").focus();
}

const CONFIRM_MS = 4000;

/** The delete confirmation lapses after a while, but never under the user's focus. */
function armConfirmTimer() {
  clearTimeout(ui.confirmTimer);
  ui.confirmTimer = setTimeout(() => {
    const id = ui.confirmDelete;
    if (!id) return;
    const row = document.querySelector(`[data-testid="session-item"][data-session-id="${CSS.escape(id)}"]`);
    if (row && row.contains(document.activeElement)) return; // re-armed when focus leaves
    ui.confirmDelete = null;
    invalidate("sessions");
  }, CONFIRM_MS);
}

const sidebarHandlers = {
  startRename(id) {
    ui.confirmDelete = null;
    ui.renaming = { id };
    ui.rovingKey = `${id}:open`;
    renderSessionsNow();
  },
  async finishRename(id, title, byKey) {
    const session = state.sessions.find((s) => s.id === id);
    if (title && session && title !== session.title) {
      ui.ownChanges.add(id);
      try {
        await saveTitle(id, title);
      } catch (err) {
        if (err.status === 0) {
          ui.pendingRenames.set(id, title);
          showError(`Not renamed yet: ${err.message} The new title is saved as soon as the connection is back.`, "rename");
        } else {
          showError(`Could not rename: ${err.message}`);
        }
      } finally {
        ui.ownChanges.delete(id);
      }
    }
    ui.renaming = null;
    if (byKey || focusLost()) focusSessionCell(`${id}:open`); // back to the chat it renamed
    else renderSessionsNow();
    invalidate("sessions", "chat");
  },
  askDelete(id) {
    ui.confirmDelete = id;
    armConfirmTimer();
    focusSessionCell(`${id}:delete`); // the same button, now "Confirm"
  },
  cancelDelete(id) {
    if (ui.confirmDelete !== id) return;
    ui.confirmDelete = null;
    clearTimeout(ui.confirmTimer);
    focusSessionCell(`${id}:delete`);
  },
  async deleteSession(id) {
    ui.confirmDelete = null;
    clearTimeout(ui.confirmTimer);
    const index = state.sessions.findIndex((s) => s.id === id);
    const neighbours = [state.sessions[index + 1], state.sessions[index - 1]].map((s) => s && s.id);
    const hadFocus = $("sessions").contains(document.activeElement);
    ui.ownChanges.add(id);
    try {
      await api.deleteSession(id); // the server aborts a running run first
    } catch (err) {
      showError(`Could not delete: ${err.message}`, err.status === 0 ? "network" : "");
      invalidate("sessions");
      return;
    } finally {
      ui.ownChanges.delete(id);
    }
    sessionGone(id, "");
    renderSessionsNow();
    if (hadFocus || focusLost()) focusAfterRemoval(neighbours);
  },
};

/** PATCH the title; the list shows what the server saved. */
async function saveTitle(id, title) {
  const data = await api.renameSession(id, title);
  // a list requested before the rename answered must not bring the old title back
  sessionsRequest += 1;
  const saved = (data && data.session && data.session.title) || title;
  store.setSessionTitle(id, saved);
  ui.pendingRenames.delete(id);
}

/** Renames that could not reach the server, sent again (on reconnect). */
async function retryRenames() {
  for (const [id, title] of [...ui.pendingRenames]) {
    if (store.isDeleted(id)) {
      ui.pendingRenames.delete(id);
      continue;
    }
    ui.ownChanges.add(id);
    try {
      await saveTitle(id, title);
    } catch (err) {
      if (err.status !== 0) {
        ui.pendingRenames.delete(id);
        showError(`Could not rename: ${err.message}`);
      }
      continue;
    } finally {
      ui.ownChanges.delete(id);
    }
    invalidate("sessions", "chat");
  }
  if (ui.errorKind === "rename" && ui.pendingRenames.size === 0) showError("");
}

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
  $("composer").focus(); // signed in: ready to type
  refreshSessions();
  connectSocket();
}

function showSignIn(message) {
  $("app").hidden = true;
  $("signin").hidden = false;
  signInError(message);
  $("token").focus();
}

function signInError(message) {
  const error = $("signin-error");
  error.textContent = message || "";
  error.hidden = !message;
  $("token").setAttribute("aria-invalid", message ? "true" : "false");
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
  showNotice("");
  ui.pendingRenames.clear();
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

/**
 * The chat list as a drawer on a narrow screen: a modal dialog while open (the chat behind it
 * inert, Tab kept inside); Escape or ✕ closes it and focus goes back to the button that
 * opened it.
 */
function openSidebar() {
  ui.sidebarOpen = true;
  ui.sidebarOpener = document.activeElement;
  $("app").classList.add("sidebar-open");
  $("backdrop").hidden = false;
  $("sidebar-toggle").setAttribute("aria-expanded", "true");
  const sidebar = $("sidebar");
  sidebar.setAttribute("role", "dialog");
  sidebar.setAttribute("aria-modal", "true");
  document.querySelector("main.chat").inert = true;
  $("skip-link").inert = true;
  renderSessionsNow();
  const stop = $("sessions").querySelector('[tabindex="0"]');
  (stop || $("new-chat")).focus();
}

function closeSidebar({ restoreFocus = true } = {}) {
  if (!ui.sidebarOpen) return;
  ui.sidebarOpen = false;
  $("app").classList.remove("sidebar-open");
  $("backdrop").hidden = true;
  $("sidebar-toggle").setAttribute("aria-expanded", "false");
  const sidebar = $("sidebar");
  sidebar.removeAttribute("role");
  sidebar.removeAttribute("aria-modal");
  document.querySelector("main.chat").inert = false;
  $("skip-link").inert = false;
  const opener = ui.sidebarOpener;
  ui.sidebarOpener = null;
  if (restoreFocus) (opener && opener.isConnected && !opener.closest("#sidebar") ? opener : $("sidebar-toggle")).focus();
}

/** The composer's hint follows the device: touch keyboards get Enter for a new line. */
function describeEnter() {
  $("composer-hint").textContent = coarsePointer.matches
    ? "Enter for a new line · the Send button sends · messages sent while an answer is streaming wait in a queue"
    : "Enter to send · Shift+Enter for a new line · messages sent while an answer is streaming wait in a queue";
}

function bind() {
  $("signin-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const token = $("token").value.trim();
    if (token) signIn(token);
    else {
      signInError("Enter your access token to sign in.");
      $("token").focus();
    }
  });
  $("skip-link").addEventListener("click", (e) => {
    e.preventDefault(); // the hash names chats: focus the box without touching it
    $("composer").focus();
  });
  $("chat-notice-dismiss").addEventListener("click", () => {
    showNotice("");
    $("composer").focus();
  });
  $("sign-out").addEventListener("click", () => signOut(""));
  $("new-chat").addEventListener("click", newChat);
  $("more-sessions").addEventListener("click", loadMoreSessions);
  $("load-earlier").addEventListener("click", loadEarlier);
  $("composer-form").addEventListener("submit", (e) => { e.preventDefault(); send(); });
  $("composer").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing && e.keyCode !== 229 && !coarsePointer.matches) {
      e.preventDefault();
      send();
    }
  });
  $("composer").addEventListener("input", () => {
    autosize();
    if ($("composer-note").textContent) composerNote("");
  });
  describeEnter();
  coarsePointer.addEventListener("change", describeEnter);
  $("stop").addEventListener("click", stop);
  $("error-dismiss").addEventListener("click", () => showError(""));
  $("sidebar-toggle").addEventListener("click", () => (ui.sidebarOpen ? closeSidebar() : openSidebar()));
  $("sidebar-close").addEventListener("click", () => closeSidebar());
  $("backdrop").addEventListener("click", () => closeSidebar());
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && ui.sidebarOpen && !e.defaultPrevented) closeSidebar();
  });
  $("sidebar").addEventListener("keydown", (e) => { if (ui.sidebarOpen) keepTabInside($("sidebar"), e); });
  narrowScreen.addEventListener("change", () => { if (!narrowScreen.matches) closeSidebar({ restoreFocus: false }); });
  $("sessions").addEventListener("keydown", (e) => chatListKey(e, $("sessions"), {
    focus: focusSessionCell,
    rename: (id) => sidebarHandlers.startRename(id),
    remove: (id) => (ui.confirmDelete === id ? sidebarHandlers.deleteSession(id) : sidebarHandlers.askDelete(id)),
    cancel: (id) => {
      if (ui.confirmDelete !== id) return false;
      sidebarHandlers.cancelDelete(id);
      return true;
    },
  }));
  $("sessions").addEventListener("focusin", (e) => {
    const cell = e.target.closest("[data-fkey]");
    if (cell && cell.tagName !== "INPUT" && ui.rovingKey !== cell.dataset.fkey) {
      ui.rovingKey = cell.dataset.fkey;
      for (const c of $("sessions").querySelectorAll("[data-fkey]")) c.tabIndex = c === cell ? 0 : -1;
    }
  });
  $("sessions").addEventListener("focusout", (e) => {
    // a confirmation left behind by the focus lapses after a while
    if (ui.confirmDelete && !$("sessions").contains(e.relatedTarget)) armConfirmTimer();
  });

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
