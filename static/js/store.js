// State store: the client's state and every rule that changes it. No DOM, no network here, so
// the rules can be read (and tested) on their own.
//
// The exactness rule (PROTOCOL.md §3/§4): every session event carries `seq`, one more than the
// previous event of the session. A view applies an event only when its seq is above the last
// one it applied (`lastSeq`), so it never applies anything twice; an event more than one above
// is a gap, and the view asks the server to replay from where it stands. `resumed.seq` is where a
// view stands after a resume: a snapshot (replay: false) replaces the view, a replay keeps it.

export const state = {
  token: "",
  user: null, // {name}
  upstream: null, // {name, kind, url, state, detail, hint} from GET /api/me, or null
  connection: "disconnected", // connected | reconnecting | disconnected
  sessions: [], // from GET /api/sessions, newest first
  nextCursor: null,
  current: null, // the open session id
  views: new Map(), // session id -> view
  outbox: [], // [{sessionId, item}]: `run` emits still to be acknowledged, in the order typed
  everConnected: false, // "Connecting…" until the first connect, "Reconnecting…" after
  deleted: new Set(), // ids of sessions deleted while this tab was open: never sent to again
};

/** Back to the signed-out state (sign-out; tests start from here too). */
export function resetState() {
  Object.assign(state, {
    token: "", user: null, upstream: null, connection: "disconnected", sessions: [],
    nextCursor: null, current: null, outbox: [], everConnected: false,
  });
  state.views.clear();
  state.deleted.clear();
}

// ------------------------------------------------------------------ account, connection --

export function signedIn(token, user) {
  state.token = token;
  state.user = user && typeof user === "object" ? user : null;
}

/** The socket's state; the first "connected" ends the "Connecting…" phase for good. */
export function setConnection(value) {
  state.connection = value;
  if (value === "connected") state.everConnected = true;
}

const UPSTREAM_STATES = new Set(["ready", "degraded", "unreachable"]);
const str = (x) => (typeof x === "string" ? x : "");

/** `upstream` from GET /api/me; anything unexpected counts as "nothing known". */
export function setUpstream(upstream) {
  if (!upstream || typeof upstream !== "object" || !UPSTREAM_STATES.has(upstream.state)) {
    state.upstream = null;
    return null;
  }
  state.upstream = {
    name: str(upstream.name), kind: str(upstream.kind), url: str(upstream.url),
    state: upstream.state, detail: str(upstream.detail), hint: str(upstream.hint),
  };
  return state.upstream;
}

/** What the page says when runs cannot reach the upstream: {text, detail, hint}, or null. */
export function upstreamNotice() {
  const u = state.upstream;
  if (!u || u.state !== "unreachable") return null;
  const where = [u.kind, u.url && `at ${u.url}`].filter(Boolean).join(" ");
  const label = [u.name && `“${u.name}”`, where && `(${where})`].filter(Boolean).join(" ");
  const text = `The upstream${label ? ` ${label}` : ""} cannot be reached.`;
  return { text, detail: u.detail, hint: u.hint };
}

// ----------------------------------------------------------------------- session list --

export function setSessions(sessions, nextCursor) {
  state.sessions = Array.isArray(sessions) ? sessions : [];
  state.nextCursor = nextCursor || null;
}

/** The next page of the list: appended, a session already listed is not listed twice. */
export function appendSessions(sessions, nextCursor) {
  const known = new Set(state.sessions.map((s) => s.id));
  const fresh = (Array.isArray(sessions) ? sessions : []).filter((s) => !known.has(s.id));
  state.sessions = [...state.sessions, ...fresh];
  state.nextCursor = nextCursor || null;
}

export function setSessionTitle(id, title) {
  for (const s of state.sessions) if (s.id === id) s.title = title;
}

/** The title the list shows for a session ("" when it is not listed). */
export function sessionTitle(id) {
  const session = state.sessions.find((s) => s.id === id);
  return session ? session.title || "" : "";
}

/** A deleted session: gone from the list and its view dropped. True when it was open. */
export function forgetSession(id) {
  state.sessions = state.sessions.filter((s) => s.id !== id);
  state.views.delete(id);
  state.outbox = state.outbox.filter((e) => e.sessionId !== id);
  state.deleted.add(id);
  return state.current === id;
}

/**
 * `session.deleted` (from any tab, this one included): the session is forgotten, its unsent
 * messages dropped, and it is never sent to again. Returns {known, wasOpen, title}.
 */
export function sessionDeleted(id) {
  const known = state.sessions.some((s) => s.id === id) || state.views.has(id);
  const title = sessionTitle(id);
  const wasOpen = forgetSession(id);
  return { known, wasOpen, title };
}

/** `session.renamed`: the new title. Returns {changed, wasOpen, before}. */
export function sessionRenamed(id, title) {
  if (typeof title !== "string" || !title) return { changed: false, wasOpen: false, before: "" };
  const before = sessionTitle(id);
  const listed = state.sessions.some((s) => s.id === id);
  setSessionTitle(id, title);
  return { changed: listed && before !== title, wasOpen: state.current === id, before };
}

/** Was this session deleted while this tab was open (a `run` must not bring it back)? */
export const isDeleted = (id) => state.deleted.has(id);

/** Open a session: it becomes current; a load error shown earlier is forgotten. */
export function openView(id) {
  state.current = id;
  const v = view(id);
  v.loadError = null;
  return v;
}

/** Nothing open. */
export function closeView() {
  state.current = null;
}

/** A new chat made in this tab: nothing of it exists on the server, so every event is new. */
export function freshView(id) {
  const v = view(id);
  v.lastSeq = 0; // seq starts at 1
  v.fresh = true;
  return v;
}

/**
 * The client's picture of one session.
 *   lastSeq   null: no view yet (or a snapshot is awaited: events are dropped until it comes)
 *   messages  the transcript, as the server's messages are (§4), plus the live ones
 *   queue     the server's queue [{queue_id, run_id, preview}] (run.queued / resumed)
 *   outgoing  messages this tab sent that are not in the transcript yet:
 *             {queue_id, text, run_id, phase: "sending" | "queued" | "starting", emitted}
 */
export function newView(id) {
  return {
    id,
    lastSeq: null,
    messages: [],
    hasMore: false, // older messages exist than the first one shown (REST pagination)
    working: false,
    aborting: false,
    runId: null,
    queue: [],
    outgoing: [],
    cancelling: new Set(), // queue_ids whose cancel_queued_run is on its way
    usage: null, // {inputTokens, outputTokens, contextTokens, contextLimit}: present ones only
    runTotals: null, // the active run's {inputTokens, outputTokens}, shown once it ends
    notice: null, // {text, error, busy}: compression
    chunking: null, // {done, total}: the active run's long message being read in parts
    gone: false, // a snapshot said the session no longer exists (deleted while away)
    fresh: false, // a new chat this tab created: not on the server until its first run
    loadError: null, // why the first resume failed (shown instead of "Loading…")
    resumesInFlight: 0, // resume emits not acknowledged yet (the ack follows the replayed events)
    maxSeen: 0, // the highest seq received: above lastSeq once a resume is done = a missed event
    gapAt: null, // the lastSeq at which a gap was last seen (a second gap there: snapshot)
  };
}

export function view(id) {
  let v = state.views.get(id);
  if (!v) {
    v = newView(id);
    state.views.set(id, v);
  }
  return v;
}

// ------------------------------------------------------------------------------ messages --

let liveCounter = 0;

function message(fields) {
  return {
    key: `live${++liveCounter}`,
    id: null,
    role: "assistant",
    content: "",
    reasoning: "",
    status: "complete",
    run_id: null,
    tool_name: null,
    tool_call_id: null,
    tool_calls: null,
    preview: "",
    error: null,
    errorCode: null,
    duration: null,
    timestamp: Date.now() / 1000,
    rev: 0, // bumped on every change: the renderer rebuilds a message only when it changed
    ...fields,
  };
}

/** Mark a message changed (the renderer caches elements per message and revision). */
function touch(m) {
  m.rev += 1;
  return m;
}

/** A server message (§4) as a view message. `previews`: tool_call_id -> tool call arguments. */
export function fromServer(m, previews = new Map()) {
  return message({
    key: `m${m.id}`,
    id: typeof m.id === "number" ? m.id : null,
    role: m.role,
    content: typeof m.content === "string" ? m.content : contentText(m.content),
    reasoning: m.reasoning || "",
    status: m.status || "complete",
    run_id: m.run_id || null,
    tool_name: m.tool_name || null,
    tool_call_id: m.tool_call_id || null,
    tool_calls: Array.isArray(m.tool_calls) ? m.tool_calls : null,
    preview: previews.get(m.tool_call_id) || "",
    error: typeof m.error === "string" ? m.error : null,
    errorCode: typeof m.error_code === "string" ? m.error_code : null,
    timestamp: m.timestamp,
  });
}

/** Content blocks as text (the server sends strings, but a block array must not crash us). */
function contentText(content) {
  if (!Array.isArray(content)) return content == null ? "" : String(content);
  return content
    .map((b) => (b && b.type === "text" ? b.text : b && b.name ? `[${b.type}: ${b.name}]` : ""))
    .filter(Boolean)
    .join("\n\n");
}

function serverMessages(list) {
  const previews = new Map();
  for (const m of list) {
    for (const call of (Array.isArray(m.tool_calls) ? m.tool_calls : [])) {
      if (call && call.id) previews.set(call.id, (call.function && call.function.arguments) || "");
    }
  }
  return list.map((m) => fromServer(m, previews));
}

/** Messages from GET …/messages (older ones): prepended, never duplicated. */
export function prependOlder(v, list, hasMore) {
  const first = v.messages.find((m) => m.id !== null);
  const older = serverMessages(list).filter((m) => m.id !== null && (!first || m.id < first.id));
  v.messages = [...older, ...v.messages];
  v.hasMore = Boolean(hasMore) && older.length > 0;
}

const runMessages = (v, runId) => v.messages.filter((m) => m.run_id === runId && m.role !== "user");
const hasUserMessage = (v, runId) => v.messages.some((m) => m.role === "user" && m.run_id === runId);

/**
 * The run's open assistant segment: the one deltas go to. Like the server's transcript, a tool
 * call closes the segment, and the next text opens a new one.
 */
function openSegment(v, runId) {
  const last = [...v.messages].reverse().find((m) => m.run_id === runId && m.role !== "user");
  if (last && last.role === "assistant" && last.status === "streaming") return last;
  const m = message({ role: "assistant", status: "streaming", run_id: runId });
  v.messages.push(m);
  return m;
}

function pushUser(v, text, runId) {
  v.messages.push(message({ role: "user", content: text, run_id: runId }));
}

// ---------------------------------------------------------------------------- outgoing --

/** A message typed in this tab, before the server has it in the transcript. */
export function addOutgoing(v, queueId, text) {
  const item = { queue_id: queueId, text, run_id: null, phase: "sending", emitted: false, tries: 0 };
  v.outgoing.push(item);
  return item;
}

export function removeOutgoing(v, queueId) {
  v.outgoing = v.outgoing.filter((o) => o.queue_id !== queueId);
}

/** The user sent a message: it shows at once and waits in the outbox for its `run` emit. */
export function enqueueRun(sessionId, queueId, text) {
  if (state.deleted.has(sessionId)) return null; // never recreate a deleted chat
  const item = addOutgoing(view(sessionId), queueId, text);
  state.outbox.push({ sessionId, item });
  return item;
}

/**
 * The next `run` to emit, {sessionId, item, v}, or null. Entries whose message is gone
 * (cancelled before it was sent, or its chat deleted) are dropped on the way.
 */
export function nextRun() {
  while (state.outbox.length) {
    const { sessionId, item } = state.outbox[0];
    const v = state.views.get(sessionId);
    if (v && v.outgoing.includes(item)) return { sessionId, item, v };
    state.outbox.shift();
  }
  return null;
}

/** A `run` emit is on its way (from now on cancelling it needs the server). */
export function runEmitted(item) {
  item.emitted = true;
  item.tries += 1;
}

/** The emit found no connection: that attempt does not count; `connect` sends it again. */
export function runOffline(item) {
  item.tries -= 1;
}

/** The server refused the run (it changed nothing) or never answered: the message is dropped. */
export function runRefused(v, item) {
  dropFromOutbox(item);
  removeOutgoing(v, item.queue_id);
}

function dropFromOutbox(item) {
  state.outbox = state.outbox.filter((e) => e.item !== item);
}

/**
 * Cancel a queued message. Returns "local" (it never left this tab: removed now), "pending" (a
 * cancel for it is on its way already) or "send" (the caller emits cancel_queued_run).
 */
export function cancelStarted(v, queueId) {
  const item = v.outgoing.find((o) => o.queue_id === queueId);
  if (item && !item.emitted) {
    removeOutgoing(v, queueId);
    dropFromOutbox(item);
    return "local";
  }
  if (v.cancelling.has(queueId)) return "pending";
  v.cancelling.add(queueId);
  return "send";
}

/** The cancel_queued_run ack. run.queued follows with the new queue; dropping it now makes
 * the click feel immediate. */
export function cancelAnswered(v, queueId, ack) {
  v.cancelling.delete(queueId);
  if (!ack || !ack.ok || !ack.cancelled) return;
  removeOutgoing(v, queueId);
  v.queue = v.queue.filter((q) => q.queue_id !== queueId);
}

// ------------------------------------------------------------------------------- abort --

/** Stop pressed: "stopping…" until the run ends. False when there is nothing to stop. */
export function abortRequested(v) {
  if (!v || !v.working || v.aborting) return false;
  v.aborting = true;
  return true;
}

/** The abort ack: refused, or nothing was running any more (its end is on its way). */
export function abortAnswered(v, ack) {
  if (!ack || !ack.ok || ack.aborting === false) v.aborting = false;
}

/**
 * The `run` ack. queued:false means the run is the session's active one (or already over):
 * the question moves into the transcript with an answer placeholder right away, so nothing
 * flickers while the upstream accepts the run. Events that come later find it by run_id.
 */
export function applyRunAck(v, item, ack) {
  dropFromOutbox(item);
  v.fresh = false; // the session exists on the server now
  item.run_id = ack.run_id || item.run_id;
  if (ack.queued) {
    if (v.outgoing.includes(item) && item.phase === "sending") item.phase = "queued";
    return;
  }
  removeOutgoing(v, item.queue_id);
  if (v.lastSeq === null || !ack.run_id || v.messages.some((m) => m.run_id === ack.run_id)) return;
  pushUser(v, item.text, ack.run_id);
  openSegment(v, ack.run_id);
  if (!v.working) {
    v.working = true;
    v.runId = ack.run_id;
    runBegins(v);
  }
}

/** Align this tab's outgoing messages with what a snapshot says. */
function reconcileOutgoing(v) {
  const queued = new Map(v.queue.map((q) => [q.queue_id, q]));
  v.outgoing = v.outgoing.filter((o) => {
    if (o.run_id && hasUserMessage(v, o.run_id)) return false; // in the transcript now
    const q = queued.get(o.queue_id);
    if (q) {
      o.phase = "queued";
      o.run_id = q.run_id || o.run_id;
      return true;
    }
    // Not acknowledged yet: still on its way. Acknowledged but neither queued nor in the
    // transcript: cancelled (or about to start; run.started then asks for a snapshot).
    return o.phase === "sending";
  });
}

/**
 * What the queue area shows, in order: the item about to start, the server's queue (with our
 * full text where we have it), then our messages the server has not listed yet.
 */
export function queueItems(v) {
  const items = listQueue(v);
  for (const item of items) item.cancelling = v.cancelling.has(item.queue_id);
  return items;
}

function listQueue(v) {
  const mine = new Map(v.outgoing.map((o) => [o.queue_id, o]));
  const listed = new Set(v.queue.map((q) => q.queue_id));
  const items = [];
  for (const o of v.outgoing) {
    if (o.phase === "starting") items.push({ queue_id: o.queue_id, text: o.text, phase: "starting", cancellable: false });
  }
  for (const q of v.queue) {
    const o = mine.get(q.queue_id);
    items.push({ queue_id: q.queue_id, text: o ? o.text : q.preview || "", phase: "queued", cancellable: true });
  }
  for (const o of v.outgoing) {
    if (o.phase === "starting" || listed.has(o.queue_id)) continue;
    items.push({
      queue_id: o.queue_id,
      text: o.text,
      phase: o.phase,
      // not emitted yet (offline): cancelling is local; acknowledged: the server cancels it
      cancellable: !o.emitted || o.phase === "queued",
    });
  }
  return items;
}

// ------------------------------------------------------------------------------ resumed --

/**
 * Apply `resumed`. Snapshot: the view becomes the snapshot, standing at `seq`. Replay: the view
 * is kept and the replayed events follow; it stands at max(lastSeq, seq), because a socket that
 * was already in the room may have applied live events past `last_seq` before this answer (the
 * replay re-sends them, and the seq rule must skip them).
 * Returns the view, or null when the answer is not for a view we keep.
 */
export function applyResumed(data) {
  if (!data || typeof data.session_id !== "string" || typeof data.seq !== "number") return null;
  const v = state.views.get(data.session_id);
  if (!v) return null;
  if (data.replay) {
    // A replay answer while a snapshot is awaited (lastSeq null): the snapshot, answered after
    // it, covers everything; keep waiting for it.
    if (v.lastSeq !== null) v.lastSeq = Math.max(v.lastSeq, data.seq);
    return v;
  }
  // seq never goes back (§6): a snapshot below where the view stands is a session that was
  // deleted while this tab was away (and perhaps made anew under the same id by a `run`).
  if (v.lastSeq !== null && !v.fresh && data.seq < v.lastSeq) {
    v.gone = true;
    return v;
  }
  v.messages = serverMessages(Array.isArray(data.messages) ? data.messages : []);
  // The snapshot holds the latest 500 at most; the list may know there are more.
  const session = state.sessions.find((s) => s.id === v.id);
  v.hasMore = v.messages.length >= 500 || Boolean(session && session.message_count > v.messages.length);
  v.lastSeq = data.seq;
  v.gapAt = null;
  v.loadError = null;
  v.working = Boolean(data.isWorking);
  v.aborting = Boolean(data.isAborting);
  v.runId = data.run_id || null;
  v.queue = Array.isArray(data.queue) ? data.queue : v.queue;
  v.notice = null;
  v.chunking = null;
  v.runTotals = null;
  const usage = { ...(v.usage || {}) };
  // Zero totals of a fresh session are "no usage yet": the gauge stays hidden until a run ends.
  // While a run is active they are the previous run's: not shown until this one ends.
  delete usage.inputTokens;
  delete usage.outputTokens;
  if (!v.working && isCount(data.inputTokens) && isCount(data.outputTokens) && (data.inputTokens || data.outputTokens)) {
    usage.inputTokens = data.inputTokens;
    usage.outputTokens = data.outputTokens;
  }
  if (isCount(data.contextTokens) && isCount(data.contextLimit)) {
    usage.contextTokens = data.contextTokens;
    usage.contextLimit = data.contextLimit;
  }
  v.usage = Object.keys(usage).length ? usage : null;
  for (const item of Array.isArray(data.events) ? data.events : []) {
    if (item && typeof item.event === "string") applyStateEvent(v, item.event, item.data || {});
  }
  reconcileOutgoing(v);
  return v;
}

const isCount = (n) => typeof n === "number" && Number.isFinite(n);

// ------------------------------------------------------------------------------- events --

/** A `resume` is sent: its payload, with last_seq when there is a view to replay onto. */
export function resumeSent(v) {
  v.resumesInFlight += 1;
  const payload = { session_id: v.id };
  if (v.lastSeq !== null) payload.last_seq = v.lastSeq;
  return payload;
}

/**
 * Its ack came (the ack follows the replayed events). True when, all resumes answered, an
 * event above lastSeq was seen and dropped for good: a gap to close.
 */
export function resumeAnswered(v, ack) {
  v.resumesInFlight = Math.max(0, v.resumesInFlight - 1);
  return Boolean(ack && ack.ok) && v.resumesInFlight === 0 && v.lastSeq !== null && v.maxSeen > v.lastSeq;
}

/** The first resume failed: say why instead of "Loading…" (a view already shown stays). */
export function setLoadError(v, message) {
  if (v.lastSeq === null) v.loadError = message;
}

/** Rebuild the view from a snapshot: events are dropped until `resumed` comes (it covers them). */
export function awaitSnapshot(v) {
  v.lastSeq = null;
}

/**
 * Events are missing before one that came. Returns "replay" (resume from where the view
 * stands), "snapshot" (a replay from here did not close the gap: start over) or null (a
 * resume on its way covers it, or the view is not on screen: it catches up when opened).
 */
export function noteGap(v) {
  if (v.resumesInFlight > 0 || v.id !== state.current) return null;
  if (v.gapAt === v.lastSeq) {
    awaitSnapshot(v);
    return "snapshot";
  }
  v.gapAt = v.lastSeq;
  return "replay";
}

/** An event with a seq came: remember the highest seen, and gate it. */
export function receive(v, seq) {
  v.maxSeen = Math.max(v.maxSeen, seq);
  return gate(v, seq);
}

/** An event without seq: only the abort answer for a session the server does not know (§2). */
export function applyUnnumbered(v, name) {
  if (name !== "abort.completed") return false;
  v.aborting = false;
  return true;
}

/**
 * Where an event stands against the view: "apply", "skip" (seen, or before the snapshot),
 * "wait" (a snapshot is awaited), "gap" (events are missing before it).
 */
export function gate(v, seq) {
  if (v.lastSeq === null) return "wait";
  if (seq <= v.lastSeq) return "skip";
  if (seq > v.lastSeq + 1) return "gap";
  return "apply";
}

/**
 * Apply one numbered event (already gated) and advance lastSeq. Returns what the caller must do:
 *   snapshot: the view cannot place the event (a run started from another tab: its question
 *             text is only in the transcript), so it must be rebuilt from a snapshot
 *   sessions: the session list changed (status, title, preview)
 */
export function applyEvent(v, name, data) {
  v.lastSeq = data.seq;
  v.gapAt = null;
  const out = { snapshot: false, sessions: false, ended: null };
  switch (name) {
    case "run.queued":
      onQueued(v, data);
      out.sessions = true;
      break;
    case "run.started":
      out.snapshot = !onStarted(v, data);
      out.sessions = true;
      break;
    case "message.delta":
      if (typeof data.delta === "string" && data.delta) touch(openSegment(v, data.run_id)).content += data.delta;
      break;
    case "reasoning.delta": {
      const text = typeof data.text === "string" ? data.text : typeof data.delta === "string" ? data.delta : "";
      if (text) touch(openSegment(v, data.run_id)).reasoning += text;
      break;
    }
    case "reasoning.available": {
      // Hermes sends the whole reasoning at once; deltas, where present, already hold it.
      const seg = openSegment(v, data.run_id);
      if (typeof data.text === "string" && data.text && !seg.reasoning) touch(seg).reasoning = data.text;
      break;
    }
    case "tool.started": {
      const seg = touch(openSegment(v, data.run_id));
      const tool = data.tool || data.name || "tool";
      const callId = data.tool_call_id || null;
      seg.status = "complete";
      seg.tool_calls = [...(seg.tool_calls || []), { id: callId, type: "function", function: { name: tool, arguments: data.preview || "" } }];
      v.messages.push(message({
        role: "tool", status: "streaming", run_id: data.run_id, tool_name: tool,
        tool_call_id: callId, preview: data.preview || "",
      }));
      break;
    }
    case "tool.completed": {
      const tool = data.tool || data.name;
      const open = v.messages.filter((m) => m.role === "tool" && m.run_id === data.run_id && m.status === "streaming");
      const m = (data.tool_call_id && open.find((t) => t.tool_call_id === data.tool_call_id))
        || open.find((t) => t.tool_name === tool) || null;
      if (m) {
        touch(m);
        m.status = data.error ? "failed" : "complete";
        if (typeof data.output === "string") m.content = data.output;
        if (isCount(data.duration)) m.duration = data.duration;
      }
      break;
    }
    case "run.completed": {
      out.snapshot = !ensureQuestion(v, data.run_id);
      const answered = runMessages(v, data.run_id).some((m) => m.role === "assistant" && m.content);
      const text = typeof data.parsed_content === "string" && data.parsed_content ? data.parsed_content
        : typeof data.output === "string" ? data.output : "";
      if (!answered && text) touch(openSegment(v, data.run_id)).content = text; // nothing streamed
      finishRun(v, data.run_id, "complete", null);
      out.sessions = true;
      out.ended = "complete";
      break;
    }
    case "run.failed": {
      out.snapshot = !ensureQuestion(v, data.run_id);
      const interrupted = data.code === "interrupted";
      finishRun(v, data.run_id, interrupted ? "interrupted" : "failed",
        typeof data.error === "string" && data.error ? data.error : "The run failed.",
        typeof data.code === "string" ? data.code : null);
      out.sessions = true;
      out.ended = interrupted ? "interrupted" : "failed";
      break;
    }
    case "run.cancelled":
      out.snapshot = !ensureQuestion(v, data.run_id);
      finishRun(v, data.run_id, "aborted", null);
      v.aborting = false;
      out.sessions = true;
      out.ended = "aborted";
      break;
    case "usage.updated": {
      const usage = { ...(v.usage || {}) };
      for (const k of ["contextTokens", "contextLimit"]) {
        if (isCount(data[k])) usage[k] = data[k];
      }
      const totals = {};
      for (const k of ["inputTokens", "outputTokens"]) {
        if (isCount(data[k])) totals[k] = data[k];
      }
      // The active run's figures (after its compression they repeat the previous run's) wait
      // for its end: the header never shows the last run's totals as this one's.
      if (v.working && data.run_id && data.run_id === v.runId) v.runTotals = totals;
      else Object.assign(usage, totals);
      v.usage = usage;
      break;
    }
    default:
      applyStateEvent(v, name, data); // compression.*, abort.*; other names only advance seq
  }
  return out;
}

/** Events that describe the active run's state (also replayed inside `resumed.events`). */
function applyStateEvent(v, name, data) {
  switch (name) {
    case "abort.started":
      v.aborting = true;
      break;
    case "abort.completed":
      v.aborting = false;
      break;
    case "compression.started": {
      const parts = [];
      if (isCount(data.message_count)) parts.push(`${data.message_count} messages`);
      if (isCount(data.token_count)) parts.push(`${data.token_count} tokens`);
      v.notice = { text: `Compressing the conversation history${parts.length ? ` (${parts.join(", ")})` : ""}…`, error: false, busy: true };
      break;
    }
    case "context.chunking":
      if (isCount(data.done) && isCount(data.total) && data.total > 0) {
        v.chunking = { done: Math.min(data.done, data.total), total: data.total };
      }
      break;
    case "compression.completed":
      if (data.error || data.compressed === false) {
        v.notice = { text: data.error ? `History compression failed: ${data.error}` : "History was not compressed.", error: Boolean(data.error) };
      } else {
        const parts = [];
        if (isCount(data.totalMessages) && isCount(data.resultMessages)) parts.push(`${data.totalMessages} → ${data.resultMessages} messages`);
        if (isCount(data.beforeTokens) && isCount(data.afterTokens)) parts.push(`${data.beforeTokens} → ${data.afterTokens} tokens`);
        v.notice = { text: `History compressed${parts.length ? `: ${parts.join(", ")}` : ""}.`, error: false };
      }
      break;
    default:
  }
}

function onQueued(v, data) {
  if (!Array.isArray(data.queue)) return; // a plain hermes-web-ui server: a length only
  const listed = new Map(data.queue.map((q) => [q.queue_id, q]));
  v.outgoing = v.outgoing.filter((o) => {
    const q = listed.get(o.queue_id);
    if (q) {
      o.phase = "queued";
      o.run_id = q.run_id || o.run_id;
      o.emitted = true;
      return true;
    }
    if (o.phase !== "queued") return true; // not acknowledged yet, or already starting
    // Off the queue: between runs it was taken off to start next; during a run, cancelled.
    if (v.working) return false;
    o.phase = "starting";
    return true;
  });
  v.queue = data.queue;
}

/** run.started: the question moves from the queue area into the transcript. */
function onStarted(v, data) {
  const runId = data.run_id;
  v.working = true;
  v.aborting = false;
  v.runId = runId;
  v.notice = null;
  v.chunking = null;
  runBegins(v);
  let item = null;
  if (data.queue_id) item = v.outgoing.find((o) => o.queue_id === data.queue_id);
  if (!item) item = v.outgoing.find((o) => o.run_id === runId);
  if (!item && !data.queue_id) {
    // A server that does not name the queue item: runs start in FIFO order.
    item = v.outgoing.find((o) => o.phase === "starting") || v.outgoing.find((o) => o.phase === "queued");
  }
  if (item) removeOutgoing(v, item.queue_id);
  // Another item shown as "starting" did not start: it was cancelled elsewhere.
  v.outgoing = v.outgoing.filter((o) => o.phase !== "starting");
  v.queue = v.queue.filter((q) => q.run_id !== runId && (!data.queue_id || q.queue_id !== data.queue_id));
  let placed = hasUserMessage(v, runId);
  if (!placed && item) {
    pushUser(v, item.text, runId);
    placed = true;
  }
  if (placed) openSegment(v, runId); // the server saved an empty answer with the run's start
  return placed;
}

/** A run's question must be in the view before its end is shown; false if we cannot place it. */
function ensureQuestion(v, runId) {
  if (hasUserMessage(v, runId)) return true;
  const item = v.outgoing.find((o) => o.run_id === runId);
  if (!item) return runMessages(v, runId).length > 0;
  removeOutgoing(v, item.queue_id); // it ended without starting (the upstream refused it)
  pushUser(v, item.text, runId);
  return true;
}

/** A run of the view became active: the header stops showing the previous run's totals. */
function runBegins(v) {
  v.runTotals = null;
  if (!v.usage) return;
  const { inputTokens, outputTokens, ...rest } = v.usage;
  v.usage = Object.keys(rest).length ? rest : null;
}

function finishRun(v, runId, status, error, code = null) {
  if (!runMessages(v, runId).some((m) => m.role === "assistant")) openSegment(v, runId);
  const msgs = runMessages(v, runId);
  for (const m of msgs) {
    if (m.status === "streaming") touch(m).status = status;
  }
  if (error) {
    const assistants = msgs.filter((m) => m.role === "assistant");
    const last = touch(assistants[assistants.length - 1]);
    last.error = error;
    last.errorCode = code;
  }
  if (!v.runId || v.runId === runId) {
    v.working = false;
    v.runId = null;
    v.aborting = false; // the run is over, whatever stopped it ("stopping…" ends here)
    v.chunking = null;
    if (v.runTotals) {
      const counted = v.runTotals.inputTokens || v.runTotals.outputTokens;
      v.usage = { ...(v.usage || {}), ...(counted ? v.runTotals : {}) };
      v.runTotals = null;
    }
  }
}

/** Failure codes that mean the message (or the chat) is too large for the model. */
export const SIZE_CODES = new Set(["context_exceeded", "input_too_large", "too_large"]);

/**
 * What "Retry" sends again for a failed answer: the text of its run's question, or null when
 * the question is not in the view (or the chat is gone).
 */
export function retryText(v, runId) {
  if (!v || !runId || state.deleted.has(v.id)) return null;
  const question = v.messages.find((m) => m.role === "user" && m.run_id === runId);
  return question && question.content.trim() ? question.content : null;
}

/**
 * The session's status as the sidebar shows it: for the open session the live view wins over
 * the list (other views stop following their session once this tab leaves its room).
 */
export function liveStatus(session) {
  const v = session.id === state.current ? state.views.get(session.id) : null;
  if (!v || v.lastSeq === null) return session.status;
  if (v.working) return "running";
  return v.queue.length ? "queued" : "idle";
}

/** The small read-only picture exposed as window.chatrun.state (for tests and debugging). */
export function debugState() {
  const v = state.current ? state.views.get(state.current) : null;
  return Object.freeze({
    sessionId: state.current,
    lastAppliedSeq: v ? v.lastSeq : null,
    connection: state.connection,
    isWorking: v ? v.working : false,
    isAborting: v ? v.aborting : false,
    queueLength: v ? queueItems(v).length : 0,
    messageCount: v ? v.messages.length : 0,
    user: state.user ? state.user.name : null,
    upstream: state.upstream ? state.upstream.state : null,
  });
}
