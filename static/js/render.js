// Renderer: state → DOM. Builds elements with text nodes only (see markdown.js), and reuses the
// element of everything that did not change (messages are cached per object and revision, queue
// bubbles and session items per signature). A message that changes keeps its <article>: only
// its inside is replaced, so a streaming answer is inserted once and never re-inserted, and a
// click on a button is never lost to a re-render. Focusable parts carry `data-fkey`: focus on
// a part that is rebuilt moves to its successor.

import { $, el, relativeTime, compactNumber, isNumber, plainText } from "./util.js";
import { renderRich } from "./markdown.js";
import { queueItems, liveStatus, SIZE_CODES } from "./store.js";

const STATUS_LABEL = {
  streaming: "streaming",
  aborted: "stopped",
  failed: "failed",
  interrupted: "interrupted",
  queued: "queued",
  sending: "sending…",
  starting: "starting…",
  running: "running",
};

function badge(status, label = STATUS_LABEL[status] || status) {
  return el("span", { className: `badge badge-${status}` }, label);
}

function clock(epochSeconds) {
  if (!isNumber(epochSeconds)) return null;
  const date = new Date(epochSeconds * 1000);
  return el("time", {
    className: "message-time",
    dateTime: date.toISOString(),
    title: date.toLocaleString(),
  }, date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }));
}

/** The `data-fkey` of the focused element when it is inside `container`, else null. */
export function focusKey(container) {
  const active = document.activeElement;
  return active && active !== document.body && container.contains(active) ? active.dataset.fkey || null : null;
}

/** Focus the element with this `data-fkey` inside `container` (true when there is one). */
export function focusByKey(container, key) {
  if (!key) return false;
  const target = [...container.querySelectorAll("[data-fkey]")].find((n) => n.dataset.fkey === key);
  if (!target || target.disabled || target.closest("[hidden]")) return false;
  target.focus({ preventScroll: true });
  return document.activeElement === target;
}

/**
 * Focus left the page, or is about to: the focused element was removed, hidden or disabled
 * (the browser moves such focus to the page itself, a moment later).
 */
export function focusLost() {
  const a = document.activeElement;
  return !a || a === document.body || !a.isConnected || Boolean(a.disabled)
    || Boolean(a.closest("[hidden]")) || a.getClientRects().length === 0;
}

/** Put `nodes` into `parent` in order, moving and removing as little as possible. */
function reconcile(parent, nodes) {
  const keep = new Set(nodes);
  for (const child of [...parent.children]) if (!keep.has(child)) child.remove();
  nodes.forEach((node, i) => {
    if (parent.children[i] !== node) parent.insertBefore(node, parent.children[i] || null);
  });
}

// ------------------------------------------------------------------------------ messages --

/** Elements per message object: {rev, aborting, el}. */
const cache = new WeakMap();

/** Messages longer than this are shown collapsed, with a "Show all" button. */
const COLLAPSE_CHARS = 2000;
const COLLAPSE_LINES = 30;

/** Keys of long messages shown whole (opened by the user, or watched while they streamed). */
const expanded = new Set();

const isLong = (text) => text.length > COLLAPSE_CHARS || text.split("\n", COLLAPSE_LINES + 1).length > COLLAPSE_LINES;

/** The keys of <details> the user opened or closed (kept across rebuilds while streaming). */
const openDetails = new Set();

function details(key, className, summary, body) {
  const node = el("details", { className, open: openDetails.has(key) }, el("summary", {}, ...summary), body);
  node.addEventListener("toggle", () => {
    if (node.open) openDetails.add(key);
    else openDetails.delete(key);
  });
  return node;
}

/** Is this message worth an element? (An empty segment that only carried tool calls is not.) */
export function visible(m) {
  if (m.role !== "assistant") return true;
  return Boolean(m.content || m.reasoning || m.error || m.status !== "complete" || !m.tool_calls);
}

function messageElement(m, aborting, handlers) {
  const hit = cache.get(m);
  if (hit && hit.rev === m.rev && hit.aborting === aborting && hit.retry === handlers.canRetry(m)) return hit.el;
  const fresh = m.role === "tool" ? toolMessage(m) : m.role === "user" ? userMessage(m) : assistantMessage(m, aborting, handlers);
  const node = hit ? morph(hit.el, fresh) : fresh;
  cache.set(m, { rev: m.rev, aborting, retry: handlers.canRetry(m), el: node });
  return node;
}

/** Give `node` the attributes and inside of `fresh`, in place (focus follows its key). */
function morph(node, fresh) {
  const key = focusKey(node);
  for (const { name } of [...node.attributes]) if (!fresh.hasAttribute(name)) node.removeAttribute(name);
  for (const { name, value } of [...fresh.attributes]) if (node.getAttribute(name) !== value) node.setAttribute(name, value);
  node.replaceChildren(...fresh.childNodes);
  if (key) focusByKey(node, key);
  return node;
}

function shell(m, ...children) {
  const streaming = m.status === "streaming";
  return el("article", {
    className: `message message-${m.role} status-${m.status}`,
    dataset: { testid: "message", role: m.role, status: m.status, ...(m.run_id ? { runId: m.run_id } : {}) },
    // a screen reader waits for a streaming answer to settle; its end is announced once
    attrs: { "aria-busy": streaming ? "true" : "false", "aria-label": m.role === "user" ? "You" : m.role === "tool" ? "Tool call" : "Assistant" },
  }, ...children);
}

function content(m, rich) {
  // data-raw: the exact text, for tests and for copying (rendering may reflow it)
  const node = el("div", { className: "message-content", id: `content-${m.key}`, dataset: { testid: "message-content", raw: m.content } });
  if (rich) renderRich(node, m.content);
  else node.textContent = m.content;
  return node;
}

/** A long message's content collapsed (unless opened) and its "Show all"/"Show less" button. */
function collapsible(m, body) {
  if (m.status === "streaming") expanded.add(m.key); // never collapse what the reader watches
  if (!isLong(m.content)) return [body, null];
  const open = expanded.has(m.key);
  body.classList.toggle("is-collapsed", !open);
  const size = `${m.content.length.toLocaleString()} characters`;
  const button = el("button", {
    type: "button",
    className: "link small collapse-toggle",
    dataset: { testid: "collapse-toggle", fkey: `${m.key}:toggle` },
    attrs: { "aria-expanded": String(open), "aria-controls": body.id },
  }, open ? "Show less" : `Show all (${size})`);
  button.addEventListener("click", () => {
    const now = !expanded.has(m.key);
    if (now) expanded.add(m.key);
    else expanded.delete(m.key);
    body.classList.toggle("is-collapsed", !now);
    button.setAttribute("aria-expanded", String(now));
    button.textContent = now ? "Show less" : `Show all (${size})`;
    if (!now) button.closest("article").scrollIntoView({ block: "nearest" });
  });
  return [body, button];
}

function userMessage(m) {
  const [body, toggle] = collapsible(m, content(m, false));
  return shell(m, el("div", { className: "bubble" }, body, toggle), el("div", { className: "message-meta" }, clock(m.timestamp)));
}

/** What a failed answer says: a size failure says so, and what to do. */
function failureText(m) {
  const detail = m.error || "the run failed.";
  if (m.errorCode === "input_too_large") {
    return `Your message is too large for the model's context window, even read in parts. Shorten it, or send only the part that matters. (${detail})`;
  }
  if (SIZE_CODES.has(m.errorCode)) {
    return `The conversation was too long for the model's context window; a retry is shortened to fit. (${detail})`;
  }
  return `Error: ${detail}`;
}

function assistantMessage(m, aborting, handlers) {
  const streaming = m.status === "streaming";
  const meta = el("div", { className: "message-meta" }, el("span", { className: "who" }, "Assistant"));
  if (streaming) meta.append(badge("streaming", aborting ? "stopping…" : "streaming"));
  else if (STATUS_LABEL[m.status]) meta.append(badge(m.status));
  meta.append(clock(m.timestamp) || "");
  const node = shell(m, meta);
  if (m.reasoning) {
    const thinking = streaming && !m.content;
    node.append(details(`${m.key}:reasoning`, "reasoning",
      [thinking ? "Thinking…" : "Reasoning", el("span", { className: "summary-hint" }, ` · ${m.reasoning.length.toLocaleString()} chars`)],
      el("div", { className: "reasoning-body" }, m.reasoning)));
  }
  const [body, toggle] = collapsible(m, content(m, true));
  if (streaming) body.classList.add("is-streaming");
  node.append(body);
  if (toggle) node.append(toggle);
  if (m.status === "failed") {
    node.append(el("div", { className: "run-error", role: "note", dataset: { testid: "run-error", code: m.errorCode || "" } }, failureText(m)));
  } else if (m.status === "interrupted") {
    node.append(el("div", { className: "run-note", role: "note" },
      m.error || "The server stopped while this answer was being written; the text so far was kept."));
  } else if (m.status === "aborted") {
    node.append(el("div", { className: "run-note", role: "note" }, "Stopped. The text so far was kept."));
  }
  if (handlers.canRetry(m)) {
    node.append(el("div", { className: "message-actions" }, el("button", {
      type: "button",
      className: "small",
      dataset: { testid: "retry", fkey: `${m.key}:retry` },
      attrs: { "aria-label": "Retry: send the same message again" },
      on: { click: () => handlers.retry(m.run_id) },
    }, "Retry")));
  }
  return node;
}

function toolMessage(m) {
  const running = m.status === "streaming";
  const summary = [
    el("span", { className: "tool-icon", attrs: { "aria-hidden": "true" } }, "⚙"),
    el("span", { className: "tool-name" }, m.tool_name || "tool"),
  ];
  if (m.preview) summary.push(el("span", { className: "tool-preview" }, m.preview));
  if (running) summary.push(badge("running", "running…"));
  else if (m.status === "failed") summary.push(badge("failed", "error"));
  else if (STATUS_LABEL[m.status]) summary.push(badge(m.status));
  if (isNumber(m.duration)) summary.push(el("span", { className: "tool-duration" }, `${m.duration < 10 ? m.duration.toFixed(1) : Math.round(m.duration)} s`));
  const body = el("div", { className: "message-content tool-output", dataset: { testid: "message-content", raw: m.content } });
  if (m.content) body.append(el("pre", {}, el("code", {}, m.content)));
  else body.append(el("p", { className: "muted" }, running ? "Running…" : "No output."));
  return shell(m, details(`${m.key}:tool`, "tool-details", summary, body));
}

// -------------------------------------------------------------------------------- chat --

/**
 * The open session: transcript, queue, notice, usage, title and composer buttons.
 * `v` may be null (nothing open).
 */
export function renderChat(v, session, handlers) {
  const transcript = $("transcript");
  const stick = transcript.scrollHeight - transcript.scrollTop - transcript.clientHeight < 80;

  const messages = v ? v.messages.filter(visible) : [];
  const aborting = Boolean(v && v.aborting);
  reconcile($("messages"), messages.map((m) => messageElement(m, aborting && m.status === "streaming", handlers)));

  const items = v ? queueItems(v) : [];
  reconcile($("queued"), items.map((item) => queuedElement(item, handlers)));
  $("queued").hidden = items.length === 0;

  const chunking = $("chunking");
  const parts = v && v.chunking;
  chunking.classList.toggle("is-active", Boolean(parts));
  $("chunking-text").textContent = parts
    ? `Reading your message in parts: ${parts.done} of ${parts.total} done`
    : "";
  const bar = $("chunking-bar");
  bar.hidden = !parts;
  if (parts) {
    bar.max = parts.total;
    bar.value = parts.done;
  }

  const loading = Boolean(v && v.lastSeq === null && !messages.length);
  $("loading").hidden = !loading;
  $("loading").textContent = v && v.loadError ? v.loadError : "Loading…";
  $("empty").hidden = loading || messages.length > 0 || items.length > 0;

  const notice = $("compression");
  notice.hidden = !(v && v.notice);
  if (v && v.notice) {
    notice.textContent = v.notice.text;
    notice.classList.toggle("is-error", Boolean(v.notice.error));
    notice.classList.toggle("is-busy", Boolean(v.notice.busy));
  }

  $("load-earlier").hidden = !(v && v.lastSeq !== null && v.hasMore);

  const working = Boolean(v && v.working);
  const stop = $("stop");
  stop.hidden = !working;
  stop.disabled = aborting;
  stop.textContent = aborting ? "Stopping…" : "Stop";
  const queues = working || items.length > 0;
  $("send").textContent = queues ? "Queue" : "Send";
  $("send").title = queues ? "Sent when the current answer is done" : "Send (Enter)";

  $("chat-title").textContent = session && session.title ? session.title : v ? "New chat" : "Chatrun";
  renderUsage(v ? v.usage : null);

  if (stick) transcript.scrollTop = transcript.scrollHeight;
}

/** Queue bubbles by queue_id: rebuilt only when they change. */
const queuedCache = new Map();

function queuedElement(item, handlers) {
  const sig = `${item.phase}|${item.cancellable}|${item.cancelling}|${item.text}`;
  const hit = queuedCache.get(item.queue_id);
  if (hit && hit.sig === sig) return hit.el;
  const node = buildQueued(item, handlers);
  queuedCache.set(item.queue_id, { sig, el: node });
  if (queuedCache.size > 200) queuedCache.delete(queuedCache.keys().next().value);
  return node;
}

function buildQueued(item, handlers) {
  const meta = el("div", { className: "message-meta" }, badge(item.phase));
  if (item.cancellable) {
    const words = item.text.trim().slice(0, 40);
    meta.append(el("button", {
      type: "button",
      className: "link small",
      disabled: item.cancelling,
      dataset: { testid: "queued-cancel", fkey: `q:${item.queue_id}` },
      attrs: { "aria-label": `Cancel queued message: ${words}${item.text.trim().length > 40 ? "…" : ""}` },
      on: { click: () => handlers.cancelQueued(item.queue_id) },
    }, item.cancelling ? "Cancelling…" : "Cancel"));
  }
  return el("div", {
    className: `message message-user queued-item phase-${item.phase}`,
    dataset: { testid: "queued-item", queueId: item.queue_id, status: item.phase },
  }, el("div", { className: "bubble" }, el("div", { className: "message-content" }, item.text)), meta);
}

/** The usage gauge: token totals and a context bar; each part only when its fields exist. */
export function renderUsage(usage) {
  const box = $("usage");
  const tokens = [];
  // Zero totals carry no information (an upstream that reports no usage): not shown.
  const counted = usage && (usage.inputTokens || usage.outputTokens);
  if (counted && isNumber(usage.inputTokens)) tokens.push(`${compactNumber(usage.inputTokens)} in`);
  if (counted && isNumber(usage.outputTokens)) tokens.push(`${compactNumber(usage.outputTokens)} out`);
  const context = usage && isNumber(usage.contextTokens) && isNumber(usage.contextLimit) && usage.contextLimit > 0;
  box.hidden = !tokens.length && !context;
  const tokenText = $("usage-tokens");
  tokenText.hidden = !tokens.length;
  tokenText.textContent = tokens.join(" · ");
  tokenText.title = usage ? `Input tokens: ${usage.inputTokens ?? "–"}, output tokens: ${usage.outputTokens ?? "–"}` : "";
  const part = $("usage-context");
  part.hidden = !context;
  if (context) {
    const pct = Math.max(0, Math.min(100, (usage.contextTokens / usage.contextLimit) * 100));
    const bar = $("context-bar");
    bar.style.setProperty("--fill", `${pct.toFixed(1)}%`); // a custom property: CSP-safe
    bar.classList.toggle("is-high", pct >= 80);
    bar.setAttribute("aria-valuenow", pct.toFixed(0));
    $("context-text").textContent = `${compactNumber(usage.contextTokens)} / ${compactNumber(usage.contextLimit)}`;
    part.title = `Context: ${usage.contextTokens} of ${usage.contextLimit} tokens (${pct.toFixed(0)}%)`;
  }
}

// ---------------------------------------------------------------------------- sidebar --

const sessionCache = new Map(); // id -> {sig, el}

/**
 * The session list. `ui.renaming` = {id} shows an input for that session; `ui.confirmDelete` =
 * id asks for confirmation.
 */
export function renderSessions(sessions, current, ui, handlers, hasMore) {
  const list = $("sessions");
  const key = focusKey(list);
  const now = Date.now() / 1000;
  const items = sessions.map((s) => {
    const status = liveStatus(s);
    const renaming = Boolean(ui.renaming && ui.renaming.id === s.id);
    const sig = [s.title, s.preview, relativeTime(s.updated_at, now), status, s.id === current, renaming, ui.confirmDelete === s.id].join("\u0000");
    const hit = sessionCache.get(s.id);
    if (hit && hit.sig === sig && !renaming) return hit.el;
    const node = sessionItem(s, status, current, ui, handlers, now);
    sessionCache.set(s.id, { sig, el: node });
    return node;
  });
  reconcile(list, items);
  for (const id of sessionCache.keys()) if (!sessions.some((s) => s.id === id)) sessionCache.delete(id);
  $("sessions-empty").hidden = sessions.length > 0;
  $("more-sessions").hidden = !hasMore;
  rove(list, ui, current);
  if (key && focusLost()) focusByKey(list, key);
}

/**
 * The chat list is one Tab stop (roving tabindex): only the remembered cell (`ui.rovingKey`,
 * else the open chat's link, else the first) has tabindex 0; arrow keys move between cells.
 */
function rove(list, ui, current) {
  const cells = [...list.querySelectorAll("[data-fkey]")];
  const keys = new Set(cells.map((c) => c.dataset.fkey));
  let stop = ui.rovingKey && keys.has(ui.rovingKey) ? ui.rovingKey : null;
  if (!stop && current && keys.has(`${current}:open`)) stop = `${current}:open`;
  if (!stop && cells.length) stop = cells[0].dataset.fkey;
  for (const cell of cells) cell.tabIndex = cell.dataset.fkey === stop ? 0 : -1;
}

function sessionItem(s, status, current, ui, handlers, now) {
  const li = el("li", {
    className: `session${s.id === current ? " is-active" : ""}`,
    dataset: { testid: "session-item", sessionId: s.id, status },
  });
  if (ui.renaming && ui.renaming.id === s.id) {
    li.append(renameField(s, handlers));
    return li;
  }
  const name = s.title || "Untitled chat";
  // The link is the title alone (its name); status, time and preview are its description.
  // The link stretches over the whole row (CSS), so a click anywhere on it opens the chat.
  const described = [];
  let statusBadge = null;
  if (status === "running" || status === "queued") {
    statusBadge = badge(status);
    statusBadge.id = `chat-status-${s.id}`;
    described.push(statusBadge.id);
  }
  const preview = plainText(s.preview || "");
  const sub = el("span", { className: "session-sub", id: `chat-sub-${s.id}` },
    el("time", { title: isNumber(s.updated_at) ? new Date(s.updated_at * 1000).toLocaleString() : "" }, relativeTime(s.updated_at, now)),
    preview ? ` · ${preview}` : "");
  described.push(sub.id);
  // A plain link: the URL hash is the open session (the controller follows hashchange).
  const link = el("a", {
    className: "session-open",
    href: `#${encodeURIComponent(s.id)}`,
    dataset: { fkey: `${s.id}:open` },
    attrs: {
      "aria-describedby": described.join(" "),
      "aria-keyshortcuts": "F2 Delete",
      ...(s.id === current ? { "aria-current": "page" } : {}),
    },
  }, el("span", { className: "session-title" }, name));
  li.append(link);
  if (statusBadge) li.append(statusBadge);
  li.append(sub);
  const confirming = ui.confirmDelete === s.id;
  li.append(el("span", { className: `session-actions${confirming ? " is-confirming" : ""}` },
    el("button", {
      type: "button",
      className: "small",
      dataset: { fkey: `${s.id}:rename`, action: "rename" },
      attrs: { "aria-label": `Rename chat ${name}` },
      on: { click: () => handlers.startRename(s.id) },
    }, "Rename"),
    el("button", {
      type: "button",
      className: `small${confirming ? " danger" : ""}`,
      dataset: { fkey: `${s.id}:delete`, action: confirming ? "confirm" : "delete" },
      attrs: { "aria-label": confirming ? `Confirm: delete chat ${name}` : `Delete chat ${name}` },
      on: { click: () => (confirming ? handlers.deleteSession(s.id) : handlers.askDelete(s.id)) },
    }, confirming ? "Confirm" : "Delete")));
  return li;
}

function renameField(session, handlers) {
  const input = el("input", {
    type: "text",
    className: "rename-input",
    value: session.title || "",
    maxLength: 200,
    dataset: { fkey: `${session.id}:input` },
    attrs: { "aria-label": `New title for chat ${session.title || "Untitled chat"}` },
  });
  let done = false;
  const finish = (save, byKey) => {
    if (done) return;
    done = true;
    handlers.finishRename(session.id, save ? input.value.trim() : null, byKey);
  };
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter") { e.preventDefault(); finish(true, true); }
    if (e.key === "Escape") { e.preventDefault(); e.stopPropagation(); finish(false, true); }
  });
  input.addEventListener("blur", () => finish(true, false));
  queueMicrotask(() => { input.focus(); input.select(); });
  return input;
}

// ---------------------------------------------------------------------- small widgets --

const CONNECTION_LABEL = { connected: "Connected", reconnecting: "Reconnecting…", disconnected: "Disconnected" };

export function renderConnection(value, label) {
  const node = $("connection");
  node.dataset.state = value;
  $("connection-label").textContent = label || CONNECTION_LABEL[value] || value;
  node.title = CONNECTION_LABEL[value] || value;
}

/**
 * The notice above the composer that runs cannot reach the upstream: `notice` = {text, detail,
 * hint} (store.upstreamNotice), or null to hide it. Its parent is a polite live region, so the text
 * is announced when it appears.
 */
export function renderUpstream(notice) {
  const box = $("upstream-notice");
  $("upstream-text").textContent = notice ? notice.text : "";
  for (const part of ["detail", "hint"]) {
    const node = $(`upstream-${part}`);
    node.textContent = notice && notice[part] ? notice[part] : "";
    node.hidden = !node.textContent;
  }
  box.hidden = !notice;
}

/** The error banner above the composer (ack errors and other failures, in place). */
export function showError(message) {
  const banner = $("error-banner");
  $("error-text").textContent = message || "";
  banner.hidden = !message;
}

/** The notice under the header: what happened to this chat elsewhere (deleted, renamed). */
export function showNotice(message) {
  $("chat-notice-text").textContent = message || "";
  $("chat-notice").classList.toggle("is-shown", Boolean(message));
  $("chat-notice-dismiss").hidden = !message;
}

let announced = "";

/**
 * Say something once to screen readers (a visually hidden polite live region): the end of an
 * answer. The same words twice differ by a trailing no-break space, so both are spoken.
 */
export function announce(message) {
  const text = message === announced.trim() ? `${message}\u00a0` : message;
  announced = text;
  $("announcer").textContent = text;
}
