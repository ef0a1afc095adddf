// Chatrun browser client: plain ES module, no build step.
//
// Exactness rule: every session event carries `seq`. A view applies an event only when its seq
// is greater than the last one it applied; `resumed.seq` is where a view stands after a resume
// (snapshot or replay). A gap (seq > last + 1) triggers a replay resume from the last seq.

const TOKEN_KEY = "chatrun_token";
const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------------------------- state --

const state = {
  token: localStorage.getItem(TOKEN_KEY) || "",
  user: null,
  socket: null,
  connection: "disconnected",
  sessions: [],
  nextCursor: null,
  current: null, // open session id
  views: new Map(), // session id -> view
};
window.chatrun = { state };

function newView() {
  return {
    lastSeq: null, // null: no view yet (first resume is a snapshot)
    messages: [], // {id, role, content, reasoning, status, run_id, tool_name, error}
    working: false,
    aborting: false,
    runId: null,
    queue: [], // server queue: {queue_id, run_id, preview}
    pending: [], // sent, not yet acknowledged: {queue_id, preview}
    usage: null,
    compression: null,
    resuming: false,
  };
}

function view(sessionId) {
  let v = state.views.get(sessionId);
  if (!v) {
    v = newView();
    state.views.set(sessionId, v);
  }
  return v;
}

const randomHex = (n) =>
  Array.from(crypto.getRandomValues(new Uint8Array(n)), (b) => b.toString(16).padStart(2, "0")).join("");

// ------------------------------------------------------------------------------------ REST --

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${state.token}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  if (!response.ok) {
    const err = (data && data.error) || {};
    throw new ApiError(response.status, err.code || "error", err.message || response.statusText);
  }
  return data;
}

// ---------------------------------------------------------------------------------- socket --

function connect() {
  const socket = io("/chat-run", {
    auth: { token: state.token },
    transports: ["websocket", "polling"],
    reconnectionDelay: 500,
    reconnectionDelayMax: 5000,
  });
  state.socket = socket;
  socket.on("connect", () => {
    setConnection("connected");
    if (state.current) resume(state.current);
  });
  socket.on("disconnect", () => setConnection("reconnecting"));
  socket.io.on("reconnect_attempt", () => setConnection("reconnecting"));
  socket.on("connect_error", (err) => {
    if (err && err.message === "Authentication failed") {
      signOut("That token was refused. Check it and sign in again.");
    } else {
      setConnection("reconnecting");
    }
  });
  for (const name of SESSION_EVENTS) {
    socket.on(name, (data) => onSessionEvent(name, data));
  }
  socket.on("resumed", onResumed);
}

function emit(event, payload) {
  return new Promise((resolve) => {
    if (!state.socket) {
      resolve({ ok: false, error: { code: "offline", message: "not connected" } });
      return;
    }
    state.socket.timeout(15000).emit(event, payload, (err, ack) => {
      if (err) resolve({ ok: false, error: { code: "timeout", message: "the server did not answer" } });
      else resolve(ack);
    });
  });
}

function resume(sessionId) {
  const v = view(sessionId);
  const payload = { session_id: sessionId };
  if (v.lastSeq !== null) payload.last_seq = v.lastSeq;
  v.resuming = true;
  return emit("resume", payload).then((ack) => {
    v.resuming = false;
    if (!ack || !ack.ok) showError(ack && ack.error ? ack.error.message : "resume failed");
  });
}

// --------------------------------------------------------------------------------- events --

const SESSION_EVENTS = [
  "run.queued", "run.started", "message.delta", "reasoning.delta", "reasoning.available",
  "tool.started", "tool.completed", "run.completed", "run.failed", "run.cancelled",
  "usage.updated", "compression.started", "compression.completed", "abort.started",
  "abort.completed", "context.chunking",
];

function onResumed(data) {
  const v = view(data.session_id);
  if (!data.replay) {
    v.messages = data.messages.map(fromServerMessage);
  }
  v.lastSeq = data.seq;
  v.working = data.isWorking;
  v.aborting = data.isAborting;
  v.runId = data.run_id || null;
  v.queue = data.queue || [];
  v.pending = v.pending.filter((p) => !v.queue.some((q) => q.queue_id === p.queue_id));
  if (data.inputTokens || data.outputTokens) {
    v.usage = { ...(v.usage || {}), inputTokens: data.inputTokens, outputTokens: data.outputTokens };
  }
  for (const item of data.events || []) applyStateEvent(v, item.event, item.data);
  if (data.session_id === state.current) render();
}

function onSessionEvent(name, data) {
  if (!data || typeof data.session_id !== "string") return;
  const v = state.views.get(data.session_id);
  if (!v) return;
  if (typeof data.seq !== "number") {
    // un-numbered answers (an abort of a session that does not exist yet)
    if (name === "abort.completed") v.aborting = false;
    if (data.session_id === state.current) render();
    return;
  }
  if (v.lastSeq === null || data.seq <= v.lastSeq) return; // before our snapshot, or seen
  if (data.seq > v.lastSeq + 1) {
    // a gap: ask the server to replay from where we stand
    if (!v.resuming) resume(data.session_id);
    return;
  }
  v.lastSeq = data.seq;
  apply(v, name, data);
  if (data.session_id === state.current) render();
  if (["run.completed", "run.failed", "run.cancelled"].includes(name)) refreshSessions();
}

function fromServerMessage(m) {
  return {
    id: m.id, role: m.role, content: m.content || "", reasoning: m.reasoning || "",
    status: m.status || "complete", run_id: m.run_id || null, tool_name: m.tool_name || null,
    error: null,
  };
}

function openAssistant(v, runId) {
  const last = v.messages[v.messages.length - 1];
  if (last && last.role === "assistant" && last.run_id === runId && last.status === "streaming" && !last.closed) {
    return last;
  }
  const msg = { id: `live-${randomHex(4)}`, role: "assistant", content: "", reasoning: "",
    status: "streaming", run_id: runId, error: null };
  v.messages.push(msg);
  return msg;
}

function runMessages(v, runId) {
  return v.messages.filter((m) => m.run_id === runId && m.role !== "user");
}

function finishRun(v, runId, status, error) {
  const msgs = runMessages(v, runId);
  if (!msgs.some((m) => m.role === "assistant")) msgs.push(openAssistant(v, runId));
  for (const m of runMessages(v, runId)) {
    if (m.status === "streaming") m.status = status;
  }
  if (error) {
    const assistants = runMessages(v, runId).filter((m) => m.role === "assistant");
    assistants[assistants.length - 1].error = error;
  }
  if (v.runId === runId) {
    v.working = false;
    v.runId = null;
  }
}

function apply(v, name, data) {
  switch (name) {
    case "run.queued":
      v.queue = data.queue || v.queue;
      v.pending = v.pending.filter((p) => !v.queue.some((q) => q.queue_id === p.queue_id));
      break;
    case "run.started": {
      v.working = true;
      v.aborting = false;
      v.runId = data.run_id;
      v.compression = null;
      const local = v.pending.find((p) => p.queue_id === data.queue_id)
        || v.queue.find((q) => q.queue_id === data.queue_id);
      v.pending = v.pending.filter((p) => p.queue_id !== data.queue_id);
      v.queue = v.queue.filter((q) => q.queue_id !== data.queue_id);
      if (local) {
        v.messages.push({ id: `live-${randomHex(4)}`, role: "user", content: local.text || local.preview,
          reasoning: "", status: "complete", run_id: data.run_id, error: null });
      } else {
        // a run sent from elsewhere: a snapshot shows its question
        setTimeout(() => { v.lastSeq = null; resume(data.session_id); }, 0);
      }
      openAssistant(v, data.run_id);
      break;
    }
    case "message.delta":
      openAssistant(v, data.run_id).content += data.delta;
      break;
    case "reasoning.delta":
      openAssistant(v, data.run_id).reasoning += data.text || data.delta || "";
      break;
    case "tool.started": {
      const segment = openAssistant(v, data.run_id);
      segment.closed = true;
      v.messages.push({ id: `tool-${data.tool_call_id}`, role: "tool", content: "",
        reasoning: "", status: "streaming", run_id: data.run_id, tool_name: data.tool || data.name,
        tool_call_id: data.tool_call_id, preview: data.preview, error: null });
      break;
    }
    case "tool.completed": {
      const tool = v.messages.find((m) => m.role === "tool" && m.tool_call_id === data.tool_call_id);
      if (tool) {
        tool.status = data.error ? "failed" : "complete";
        if (typeof data.output === "string") tool.content = data.output;
        tool.duration = data.duration;
      }
      break;
    }
    case "run.completed": {
      const msgs = runMessages(v, data.run_id).filter((m) => m.role === "assistant");
      const text = msgs.map((m) => m.content).join("");
      if (data.parsed_content) {
        if (msgs.length) msgs[msgs.length - 1].content = data.parsed_content;
      } else if (!text && data.output) {
        openAssistant(v, data.run_id).content = data.output;
      }
      finishRun(v, data.run_id, "complete", null);
      break;
    }
    case "run.failed":
      finishRun(v, data.run_id, "failed", data.error || "the run failed");
      break;
    case "run.cancelled":
      finishRun(v, data.run_id, "aborted", null);
      v.aborting = false;
      break;
    case "usage.updated":
      v.usage = { ...(v.usage || {}), ...data };
      break;
    default:
      applyStateEvent(v, name, data);
  }
}

function applyStateEvent(v, name, data) {
  switch (name) {
    case "abort.started":
      v.aborting = true;
      break;
    case "abort.completed":
      v.aborting = false;
      break;
    case "compression.started":
      v.compression = { text: `Compressing ${data.message_count} earlier messages…` };
      break;
    case "compression.completed":
      v.compression = data.error
        ? { text: `Context compression failed: ${data.error}`, error: true }
        : { text: `Context compressed: ${data.beforeTokens} → ${data.afterTokens} tokens` };
      break;
    case "context.chunking":
      v.compression = { text: `Reading a long input: part ${data.done} of ${data.total}` };
      break;
    default:
  }
}

// ------------------------------------------------------------------------------ rendering --

// Safe text rendering: fenced code blocks, paragraphs and inline code, always as text nodes.
function renderText(container, text) {
  container.replaceChildren();
  const parts = text.split(/```/);
  parts.forEach((part, i) => {
    if (i % 2 === 1) {
      const newline = part.indexOf("\n");
      const body = newline >= 0 && /^[\w+-]*$/.test(part.slice(0, newline)) ? part.slice(newline + 1) : part;
      const pre = document.createElement("pre");
      const code = document.createElement("code");
      code.textContent = body.replace(/\n$/, "");
      pre.append(code);
      container.append(pre);
      return;
    }
    for (const para of part.split(/\n{2,}/)) {
      if (!para.trim()) continue;
      const p = document.createElement("p");
      para.split(/`([^`\n]+)`/).forEach((chunk, j) => {
        if (j % 2 === 1) {
          const code = document.createElement("code");
          code.textContent = chunk;
          p.append(code);
        } else if (chunk) {
          p.append(document.createTextNode(chunk));
        }
      });
      container.append(p);
    }
  });
}

const STATUS_LABEL = { streaming: "streaming", aborted: "stopped", failed: "failed",
  interrupted: "interrupted", queued: "queued" };

function badge(status) {
  const span = document.createElement("span");
  span.className = `badge ${status}`;
  span.textContent = STATUS_LABEL[status] || status;
  return span;
}

function renderMessage(m) {
  const el = document.createElement("div");
  el.className = `message ${m.role}`;
  el.dataset.testid = "message";
  el.dataset.role = m.role;
  el.dataset.status = m.status;
  if (m.run_id) el.dataset.runId = m.run_id;
  const meta = document.createElement("div");
  meta.className = "message-meta";
  meta.append(m.role === "tool" ? `Tool · ${m.tool_name || "tool"}` : m.role === "user" ? "You" : "Assistant");
  if (STATUS_LABEL[m.status]) meta.append(badge(m.status));
  el.append(meta);
  if (m.role === "tool") {
    const details = document.createElement("details");
    const summary = document.createElement("summary");
    summary.textContent = m.preview ? `${m.tool_name}: ${m.preview}` : `${m.tool_name} activity`;
    details.append(summary);
    const body = document.createElement("div");
    body.className = "message-content";
    body.dataset.testid = "message-content";
    renderText(body, m.content || (m.status === "streaming" ? "running…" : "(no output)"));
    details.append(body);
    el.append(details);
    return el;
  }
  if (m.reasoning) {
    const details = document.createElement("details");
    const summary = document.createElement("summary");
    summary.textContent = "Reasoning";
    const body = document.createElement("div");
    body.className = "reasoning";
    body.textContent = m.reasoning;
    details.append(summary, body);
    el.append(details);
  }
  const content = document.createElement("div");
  content.className = "message-content";
  content.dataset.testid = "message-content";
  content.dataset.raw = m.content;
  renderText(content, m.content);
  if (m.status === "streaming") content.classList.add("cursor");
  el.append(content);
  if (m.error) {
    const err = document.createElement("div");
    err.className = "run-error";
    err.textContent = `Error: ${m.error}`;
    el.append(err);
  }
  return el;
}

function renderQueued(v) {
  const items = [...v.queue.map((q) => ({ ...q, text: q.preview })), ...v.pending];
  const box = $("queued");
  box.replaceChildren();
  for (const item of items) {
    const el = document.createElement("div");
    el.className = "message user queued-item";
    el.dataset.testid = "queued-item";
    el.dataset.queueId = item.queue_id;
    const meta = document.createElement("div");
    meta.className = "message-meta";
    const cancel = document.createElement("button");
    cancel.type = "button";
    cancel.textContent = "Cancel";
    cancel.dataset.testid = "queued-cancel";
    cancel.addEventListener("click", () => cancelQueued(item.queue_id));
    meta.append("Queued", badge("queued"), cancel);
    const content = document.createElement("div");
    content.className = "message-content";
    renderText(content, item.text || item.preview || "");
    el.append(meta, content);
    box.append(el);
  }
}

function render() {
  const v = state.current ? view(state.current) : newView();
  const box = $("messages");
  box.replaceChildren(...v.messages.map(renderMessage));
  renderQueued(v);
  $("empty").hidden = v.messages.length > 0 || v.queue.length > 0 || v.pending.length > 0;
  const stop = $("stop");
  stop.hidden = !v.working;
  stop.disabled = v.aborting;
  stop.textContent = v.aborting ? "Stopping…" : "Stop";
  const session = state.sessions.find((s) => s.id === state.current);
  $("chat-title").textContent = session ? session.title : state.current ? "New chat" : "Chatrun";
  renderUsage(v.usage);
  const notice = $("compression");
  notice.hidden = !v.compression;
  notice.textContent = v.compression ? v.compression.text : "";
  const transcript = $("transcript");
  const nearBottom = transcript.scrollHeight - transcript.scrollTop - transcript.clientHeight < 120;
  if (nearBottom) transcript.scrollTop = transcript.scrollHeight;
}

function renderUsage(usage) {
  const box = $("usage");
  if (!usage || (usage.inputTokens === undefined && usage.outputTokens === undefined)) {
    box.hidden = true;
    return;
  }
  box.hidden = false;
  const parts = [`in ${usage.inputTokens ?? 0}`, `out ${usage.outputTokens ?? 0}`];
  const bar = $("context-bar");
  if (usage.contextTokens !== undefined && usage.contextLimit) {
    parts.push(`context ${usage.contextTokens}/${usage.contextLimit}`);
    bar.hidden = false;
    const pct = Math.min(100, Math.round((usage.contextTokens / usage.contextLimit) * 100));
    $("context-fill").style.setProperty("--fill", `${pct}%`);
  } else {
    bar.hidden = true;
  }
  $("usage-text").textContent = parts.join(" · ");
}

function relativeTime(epochSeconds) {
  const seconds = Math.max(0, Date.now() / 1000 - epochSeconds);
  if (seconds < 60) return "just now";
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
  return new Date(epochSeconds * 1000).toLocaleDateString();
}

function renderSessions() {
  const list = $("sessions");
  list.replaceChildren();
  for (const s of state.sessions) {
    const li = document.createElement("li");
    li.className = `session${s.id === state.current ? " active" : ""}`;
    li.dataset.testid = "session-item";
    li.dataset.sessionId = s.id;
    const top = document.createElement("div");
    top.className = "session-top";
    const title = document.createElement("span");
    title.className = "session-title";
    title.textContent = s.title || "Untitled";
    top.append(title);
    if (s.status !== "idle") top.append(badge(s.status === "running" ? "streaming" : "queued"));
    const actions = document.createElement("span");
    actions.className = "session-actions";
    const rename = document.createElement("button");
    rename.type = "button";
    rename.textContent = "Rename";
    rename.addEventListener("click", (e) => { e.stopPropagation(); startRename(li, s); });
    const del = document.createElement("button");
    del.type = "button";
    del.textContent = "Delete";
    del.addEventListener("click", (e) => { e.stopPropagation(); deleteSession(s, del); });
    actions.append(rename, del);
    top.append(actions);
    const preview = document.createElement("span");
    preview.className = "session-preview";
    preview.textContent = `${relativeTime(s.updated_at)} · ${s.preview || ""}`;
    li.append(top, preview);
    li.addEventListener("click", () => openSession(s.id));
    list.append(li);
  }
  $("more-sessions").hidden = !state.nextCursor;
}

function setConnection(value) {
  state.connection = value;
  const el = $("connection");
  el.dataset.state = value;
  el.textContent = value;
}

function showError(message) {
  const el = $("error-banner");
  el.textContent = message;
  el.hidden = !message;
  if (message) setTimeout(() => { if (el.textContent === message) el.hidden = true; }, 8000);
}

// -------------------------------------------------------------------------------- actions --

async function refreshSessions(more = false) {
  try {
    const query = new URLSearchParams({ limit: "50" });
    if (more && state.nextCursor) query.set("before", state.nextCursor);
    const data = await api("GET", `/api/sessions?${query}`);
    state.sessions = more ? [...state.sessions, ...data.sessions] : data.sessions;
    state.nextCursor = data.next_cursor;
    renderSessions();
    render();
  } catch (err) {
    if (err.status === 401) signOut("Your token is no longer accepted.");
  }
}

function openSession(sessionId) {
  if (state.current && state.current !== sessionId && state.socket) {
    emit("leave", { session_id: state.current });
  }
  state.current = sessionId;
  history.replaceState(null, "", `#${encodeURIComponent(sessionId)}`);
  $("sidebar").classList.remove("open");
  renderSessions();
  render();
  if (state.socket && state.socket.connected) resume(sessionId);
  $("composer").focus();
}

function newChat() {
  const id = `s_${randomHex(8)}`;
  state.views.set(id, { ...newView(), lastSeq: 0 });
  openSession(id);
}

async function send() {
  const box = $("composer");
  const text = box.value;
  if (!text.trim()) return;
  if (!state.current) newChat();
  const sessionId = state.current;
  const v = view(sessionId);
  if (v.lastSeq === null) v.lastSeq = 0;
  const queueId = `q_${randomHex(8)}`;
  v.pending.push({ queue_id: queueId, text, preview: text.slice(0, 100) });
  box.value = "";
  $("composer-error").hidden = true;
  render();
  const ack = await emit("run", { session_id: sessionId, input: text, queue_id: queueId });
  if (!ack || !ack.ok) {
    v.pending = v.pending.filter((p) => p.queue_id !== queueId);
    box.value = text;
    const err = $("composer-error");
    err.textContent = ack && ack.error ? ack.error.message : "the message could not be sent";
    err.hidden = false;
    render();
    return;
  }
  if (!state.sessions.some((s) => s.id === sessionId)) refreshSessions();
}

async function cancelQueued(queueId) {
  const sessionId = state.current;
  const ack = await emit("cancel_queued_run", { session_id: sessionId, queue_id: queueId });
  if (!ack || !ack.ok) showError(ack && ack.error ? ack.error.message : "could not cancel");
}

async function stop() {
  const v = view(state.current);
  v.aborting = true;
  render();
  const ack = await emit("abort", { session_id: state.current });
  if (!ack || !ack.ok) {
    v.aborting = false;
    showError(ack && ack.error ? ack.error.message : "could not stop the run");
    render();
  }
}

function startRename(li, session) {
  const input = document.createElement("input");
  input.value = session.title;
  input.maxLength = 200;
  li.replaceChildren(input);
  input.focus();
  input.select();
  let done = false;
  const finish = async (save) => {
    if (done) return;
    done = true;
    const title = input.value.trim();
    if (save && title && title !== session.title) {
      try {
        await api("PATCH", `/api/sessions/${encodeURIComponent(session.id)}`, { title });
      } catch (err) {
        showError(err.message);
      }
    }
    refreshSessions();
  };
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter") finish(true);
    if (e.key === "Escape") finish(false);
  });
  input.addEventListener("blur", () => finish(true));
}

async function deleteSession(session, button) {
  if (button.dataset.confirm !== "1") {
    button.dataset.confirm = "1";
    button.textContent = "Confirm?";
    setTimeout(() => { button.dataset.confirm = ""; button.textContent = "Delete"; }, 3000);
    return;
  }
  try {
    await api("DELETE", `/api/sessions/${encodeURIComponent(session.id)}`);
    state.views.delete(session.id);
    if (state.current === session.id) {
      state.current = null;
      history.replaceState(null, "", "#");
    }
    await refreshSessions();
  } catch (err) {
    showError(err.message);
  }
}

// ---------------------------------------------------------------------------- sign-in flow --

async function signIn(token) {
  state.token = token;
  const me = await api("GET", "/api/me");
  localStorage.setItem(TOKEN_KEY, token);
  state.user = me.user;
  $("user-name").textContent = me.user.name;
  $("signin").hidden = true;
  $("app").hidden = false;
  const fromHash = decodeURIComponent(location.hash.slice(1));
  if (fromHash) {
    state.current = fromHash;
    view(fromHash);
  }
  await refreshSessions();
  connect();
}

function signOut(message) {
  localStorage.removeItem(TOKEN_KEY);
  if (state.socket) {
    state.socket.removeAllListeners();
    state.socket.disconnect();
    state.socket = null;
  }
  state.token = "";
  state.views.clear();
  state.current = null;
  setConnection("disconnected");
  $("app").hidden = true;
  $("signin").hidden = false;
  const err = $("signin-error");
  err.textContent = message || "";
  err.hidden = !message;
}

function bind() {
  $("signin-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const token = $("token").value.trim();
    try {
      await signIn(token);
    } catch (err) {
      signOut(err.status === 401 ? "That token was refused. Check it and try again."
        : `Cannot reach the server: ${err.message}`);
    }
  });
  $("sign-out").addEventListener("click", () => signOut(""));
  $("new-chat").addEventListener("click", newChat);
  $("more-sessions").addEventListener("click", () => refreshSessions(true));
  $("composer-form").addEventListener("submit", (e) => { e.preventDefault(); send(); });
  $("composer").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      send();
    }
  });
  $("stop").addEventListener("click", stop);
  $("sidebar-toggle").addEventListener("click", () => $("sidebar").classList.add("open"));
  $("sidebar-close").addEventListener("click", () => $("sidebar").classList.remove("open"));
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible" && state.current && state.socket && state.socket.connected) {
      resume(state.current);
    }
  });
}

bind();
if (state.token) {
  signIn(state.token).catch((err) =>
    signOut(err.status === 401 ? "Your saved token is no longer accepted." : ""));
} else {
  signOut("");
}
