// The rest of the store's actions: account and connection, the session list, which session is
// open, older messages, the upstream notice, and the read-only debug picture.

import { test, beforeEach } from "node:test";
import assert from "node:assert/strict";

import {
  state, view, resetState, signedIn, setConnection, setUpstream, upstreamNotice, setSessions,
  appendSessions, setSessionTitle, forgetSession, openView, closeView, freshView, enqueueRun,
  prependOlder, liveStatus, debugState, applyResumed,
} from "../../static/js/store.js";
import { SID, openWith, resumed, serverMessage } from "./helpers.mjs";

beforeEach(() => resetState());

const session = (id, fields = {}) => ({ id, title: id, status: "idle", message_count: 0, ...fields });

test("sign-in keeps the token and user; reset forgets everything", () => {
  signedIn("tok", { name: "alice" });
  setConnection("connected");
  setUpstream({ name: "default", kind: "hermes", url: "http://x", state: "ready", detail: "" });
  setSessions([session("a")], "cursor");
  openView("a");
  enqueueRun("a", "q_1", "hi");
  resetState();
  assert.equal(state.token, "");
  assert.equal(state.user, null);
  assert.equal(state.upstream, null);
  assert.equal(state.connection, "disconnected");
  assert.equal(state.everConnected, false);
  assert.deepEqual(state.sessions, []);
  assert.equal(state.nextCursor, null);
  assert.equal(state.current, null);
  assert.equal(state.views.size, 0);
  assert.deepEqual(state.outbox, []);
});

test("the first connect ends the 'Connecting…' phase for good", () => {
  setConnection("reconnecting");
  assert.equal(state.everConnected, false);
  setConnection("connected");
  setConnection("reconnecting");
  assert.equal(state.connection, "reconnecting");
  assert.equal(state.everConnected, true);
});

test("the session list: set, then pages appended without listing a session twice", () => {
  setSessions([session("c"), session("b")], "cur1");
  appendSessions([session("b"), session("a")], null);
  assert.deepEqual(state.sessions.map((s) => s.id), ["c", "b", "a"]);
  assert.equal(state.nextCursor, null);
  setSessions(undefined, undefined);
  assert.deepEqual(state.sessions, []);
});

test("a rename shows in the list", () => {
  setSessions([session("a"), session("b")], null);
  setSessionTitle("b", "Renamed");
  assert.deepEqual(state.sessions.map((s) => s.title), ["a", "Renamed"]);
});

test("a deleted session leaves the list, its view and the outbox; says whether it was open", () => {
  setSessions([session("a"), session("b")], null);
  openView("b");
  enqueueRun("b", "q_1", "pending");
  assert.equal(forgetSession("a"), false);
  assert.equal(forgetSession("b"), true);
  assert.deepEqual(state.sessions, []);
  assert.equal(state.views.has("b"), false);
  assert.deepEqual(state.outbox, []);
});

test("opening a session makes it current and forgets an earlier load error", () => {
  const v = view("a");
  v.loadError = "could not open";
  assert.equal(openView("a"), v);
  assert.equal(state.current, "a");
  assert.equal(v.loadError, null);
  closeView();
  assert.equal(state.current, null);
  assert.equal(state.views.has("a"), true, "the view is kept for a later replay");
});

test("a fresh chat stands at seq 0", () => {
  const v = freshView("s_new");
  assert.equal(v.lastSeq, 0);
  assert.equal(v.fresh, true);
});

test("older messages are prepended once, in order", () => {
  const v = openWith({ seq: 3, messages: [
    serverMessage({ id: 10, role: "user", content: "ten" }),
    serverMessage({ id: 11, role: "assistant", content: "eleven" }),
  ] });
  prependOlder(v, [
    serverMessage({ id: 8, role: "user", content: "eight" }),
    serverMessage({ id: 9, role: "assistant", content: "nine" }),
    serverMessage({ id: 10, role: "user", content: "ten again" }),
  ], true);
  assert.deepEqual(v.messages.map((m) => m.content), ["eight", "nine", "ten", "eleven"]);
  assert.equal(v.hasMore, true);
  prependOlder(v, [serverMessage({ id: 9, role: "user", content: "nine" })], true);
  assert.equal(v.messages.length, 4);
  assert.equal(v.hasMore, false, "nothing new: nothing more to load");
});

test("the sidebar status: the open session's live view wins over the list", () => {
  const v = openWith({ seq: 1 });
  const listed = session(SID, { status: "idle" });
  assert.equal(liveStatus(listed), "idle");
  v.working = true;
  assert.equal(liveStatus(listed), "running");
  v.working = false;
  v.queue = [{ queue_id: "q", run_id: "r", preview: "" }];
  assert.equal(liveStatus(listed), "queued");
  assert.equal(liveStatus(session("s_elsewhere", { status: "running" })), "running");
});

test("the upstream state from /api/me is kept; anything unexpected is nothing known", () => {
  const u = setUpstream({ name: "default", kind: "hermes", url: "http://127.0.0.1:9", state: "unreachable", detail: "refused.", hint: "Set it.", extra: 1 });
  assert.deepEqual(u, { name: "default", kind: "hermes", url: "http://127.0.0.1:9", state: "unreachable", detail: "refused.", hint: "Set it." });
  assert.equal(setUpstream(null), null);
  assert.equal(setUpstream({ state: "on fire" }), null);
  assert.equal(setUpstream("ready"), null);
  assert.equal(state.upstream, null);
});

test("the upstream notice names the upstream, says why and what to set", () => {
  setUpstream({
    name: "default", kind: "hermes", url: "http://127.0.0.1:9", state: "unreachable",
    detail: "Cannot reach the upstream at http://127.0.0.1:9.",
    hint: "Start the upstream server, or set CHATRUN_UPSTREAM_URL.",
  });
  assert.deepEqual(upstreamNotice(), {
    text: "The upstream “default” (hermes at http://127.0.0.1:9) cannot be reached.",
    detail: "Cannot reach the upstream at http://127.0.0.1:9.",
    hint: "Start the upstream server, or set CHATRUN_UPSTREAM_URL.",
  });
  setUpstream({ state: "unreachable" });
  assert.deepEqual(upstreamNotice(), { text: "The upstream cannot be reached.", detail: "", hint: "" });
});

test("no upstream notice when it is ready, degraded or unknown", () => {
  for (const s of ["ready", "degraded"]) {
    setUpstream({ name: "default", kind: "openai", url: "http://x/v1", state: s, detail: "" });
    assert.equal(upstreamNotice(), null, s);
  }
  setUpstream(null);
  assert.equal(upstreamNotice(), null);
});

test("the debug picture is small, read-only and follows the open view", () => {
  openWith({ seq: 7, isWorking: true, run_id: "run_x" });
  signedIn("tok", { name: "alice" });
  setUpstream({ name: "default", kind: "hermes", url: "u", state: "degraded", detail: "" });
  enqueueRun(SID, "q_1", "x");
  const d = debugState();
  assert.deepEqual({ ...d }, {
    sessionId: SID, lastAppliedSeq: 7, connection: "disconnected", isWorking: true,
    isAborting: false, queueLength: 1, messageCount: 0, user: "alice", upstream: "degraded",
  });
  assert.ok(Object.isFrozen(d));
  applyResumed(resumed({ seq: 8 }));
  assert.equal(debugState().lastAppliedSeq, 8);
});
