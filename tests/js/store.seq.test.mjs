// The seq rule and resume (PROTOCOL.md §3, §4): apply an event only when its seq is the next
// one, never twice, notice gaps, and stand where a snapshot or a replay says.

import { test, beforeEach } from "node:test";
import assert from "node:assert/strict";

import {
  state, view, gate, receive, applyResumed, awaitSnapshot, noteGap, resumeSent, resumeAnswered,
  setLoadError, openView, resetState, freshView,
} from "../../static/js/store.js";
import { SID, answer, deliver, deliverAll, openWith, resumed, serverMessage } from "./helpers.mjs";

const RUN = "run_" + "a".repeat(32);

beforeEach(() => resetState());

test("gate: wait without a view, skip what is applied, gap when one is missing, else apply", () => {
  const v = view(SID);
  assert.equal(gate(v, 1), "wait");
  v.lastSeq = 5;
  assert.equal(gate(v, 4), "skip");
  assert.equal(gate(v, 5), "skip");
  assert.equal(gate(v, 6), "apply");
  assert.equal(gate(v, 7), "gap");
});

test("receive remembers the highest seq seen, also for events it does not apply", () => {
  const v = openWith({ seq: 3 });
  assert.equal(receive(v, 9), "gap");
  assert.equal(receive(v, 2), "skip");
  assert.equal(v.maxSeen, 9);
  assert.equal(v.lastSeq, 3);
});

test("a duplicate event is applied once", () => {
  const v = openWith({ seq: 1, isWorking: true, run_id: RUN, messages: [
    serverMessage({ role: "user", content: "hi", run_id: RUN }),
    serverMessage({ role: "assistant", status: "streaming", run_id: RUN }),
  ] });
  const delta = ["message.delta", { seq: 2, run_id: RUN, delta: "Hello" }];
  const results = deliverAll(v, [delta, delta, delta]);
  assert.deepEqual(results.map((r) => r.verdict), ["apply", "skip", "skip"]);
  assert.equal(answer(v, RUN), "Hello");
  assert.equal(v.lastSeq, 2);
});

test("a gap is detected: the event is not applied and the view does not move", () => {
  const v = openWith({ seq: 3, isWorking: true, run_id: RUN, messages: [
    serverMessage({ role: "user", content: "hi", run_id: RUN }),
    serverMessage({ role: "assistant", status: "streaming", run_id: RUN, content: "a" }),
  ] });
  const { verdict } = deliver(v, "message.delta", { seq: 5, run_id: RUN, delta: "c" });
  assert.equal(verdict, "gap");
  assert.equal(answer(v, RUN), "a");
  assert.equal(v.lastSeq, 3);
});

test("a gap asks for a replay first, then for a snapshot if the replay did not close it", () => {
  const v = openWith({ seq: 3 });
  assert.equal(noteGap(v), "replay");
  assert.equal(v.gapAt, 3);
  assert.equal(v.lastSeq, 3);
  assert.equal(noteGap(v), "snapshot"); // still missing at the same place
  assert.equal(v.lastSeq, null);
  assert.equal(gate(v, 4), "wait"); // events wait for the snapshot
});

test("applying an event clears the gap mark: a later gap replays again", () => {
  const v = openWith({ seq: 3 });
  assert.equal(noteGap(v), "replay");
  deliver(v, "usage.updated", { seq: 4, inputTokens: 1, outputTokens: 1 });
  assert.equal(v.gapAt, null);
  assert.equal(noteGap(v), "replay");
});

test("no resume for a gap while one is in flight, or for a view not on screen", () => {
  const v = openWith({ seq: 3 });
  resumeSent(v);
  assert.equal(noteGap(v), null);
  resumeAnswered(v, { ok: true });
  openView("s_other");
  assert.equal(noteGap(v), null);
  assert.equal(v.lastSeq, 3);
});

test("resume payload: no last_seq without a view (snapshot), last_seq with one (replay)", () => {
  const v = view(SID);
  assert.deepEqual(resumeSent(v), { session_id: SID });
  v.lastSeq = 12;
  assert.deepEqual(resumeSent(v), { session_id: SID, last_seq: 12 });
  assert.equal(v.resumesInFlight, 2);
});

test("a resume answered with an event past lastSeq dropped means a gap remains", () => {
  const v = openWith({ seq: 4 });
  resumeSent(v);
  resumeSent(v);
  receive(v, 7); // seen, never applied
  assert.equal(resumeAnswered(v, { ok: true, seq: 4 }), false, "another resume still covers it");
  assert.equal(resumeAnswered(v, { ok: false, error: { code: "timeout" } }), false);
  assert.equal(v.resumesInFlight, 0);
  resumeSent(v);
  assert.equal(resumeAnswered(v, { ok: true, seq: 4 }), true);
  resumeAnswered(v, { ok: true });
  assert.equal(v.resumesInFlight, 0, "never below zero");
});

test("a resume that closes everything leaves no gap", () => {
  const v = openWith({ seq: 4 });
  resumeSent(v);
  receive(v, 5);
  deliver(v, "usage.updated", { seq: 5, inputTokens: 1, outputTokens: 2 });
  assert.equal(resumeAnswered(v, { ok: true }), false);
});

test("snapshot: the view becomes the snapshot and stands at resumed.seq", () => {
  const v = view(SID);
  openView(SID);
  v.lastSeq = 12; // a view behind the snapshot: the snapshot replaces it
  v.messages = [{ key: "old", role: "user", content: "stale", run_id: null }];
  applyResumed(resumed({
    seq: 17, isWorking: true, isAborting: true, run_id: RUN, inputTokens: 10, outputTokens: 5,
    queue: [{ queue_id: "q1", run_id: "run_q1", preview: "next" }],
    messages: [
      serverMessage({ role: "user", content: "question", run_id: RUN }),
      serverMessage({ role: "assistant", content: "partial ans", status: "streaming", run_id: RUN }),
    ],
  }));
  assert.equal(v.lastSeq, 17);
  assert.deepEqual(v.messages.map((m) => m.content), ["question", "partial ans"]);
  assert.equal(v.working, true);
  assert.equal(v.aborting, true);
  assert.equal(v.runId, RUN);
  assert.deepEqual(v.queue.map((q) => q.queue_id), ["q1"]);
  assert.equal(v.usage, null, "a run is active: the totals are the previous run's, not shown");
});

test("snapshot plus the events after it is the transcript: nothing missing, nothing twice", () => {
  const v = openWith({ seq: 10, isWorking: true, run_id: RUN, messages: [
    serverMessage({ role: "user", content: "q", run_id: RUN }),
    serverMessage({ role: "assistant", content: "Hello", status: "streaming", run_id: RUN }),
  ] });
  deliverAll(v, [
    ["message.delta", { seq: 9, run_id: RUN, delta: "lo" }], // already in the snapshot
    ["message.delta", { seq: 10, run_id: RUN, delta: "lo" }], // already in the snapshot
    ["message.delta", { seq: 11, run_id: RUN, delta: ", world" }],
    ["usage.updated", { seq: 12, inputTokens: 3, outputTokens: 4 }],
    ["run.completed", { seq: 13, run_id: RUN, output: "Hello, world", queue_remaining: 0 }],
  ]);
  assert.equal(answer(v, RUN), "Hello, world");
  assert.equal(v.lastSeq, 13);
  assert.equal(v.working, false);
});

test("snapshot applies the active run's state events (abort.*, compression.*)", () => {
  const v = openWith({ seq: 3, isWorking: true, run_id: RUN, events: [
    { event: "compression.started", data: { message_count: 40, token_count: 9000 } },
    { event: "abort.started", data: { run_id: RUN, graceMs: 3000 } },
  ] });
  assert.equal(v.aborting, true);
  assert.match(v.notice.text, /40 messages, 9000 tokens/);
});

test("snapshot of a fresh session: zero totals are no usage yet", () => {
  const v = openWith({ seq: 0 });
  assert.equal(v.usage, null);
});

test("snapshot: older messages exist when it holds 500, or when the list counts more", () => {
  resetState();
  state.sessions = [{ id: SID, message_count: 3 }];
  const v = openView(SID);
  applyResumed(resumed({ seq: 2, messages: [serverMessage({ role: "user", content: "x" })] }));
  assert.equal(v.hasMore, true);
  state.sessions = [{ id: SID, message_count: 1 }];
  applyResumed(resumed({ seq: 2, messages: [serverMessage({ role: "user", content: "x" })] }));
  assert.equal(v.hasMore, false);
  const many = Array.from({ length: 500 }, () => serverMessage({ role: "user", content: "m" }));
  applyResumed(resumed({ seq: 2, messages: many }));
  assert.equal(v.hasMore, true);
});

test("replay: the view is kept and stands at the higher of lastSeq and resumed.seq", () => {
  const v = openWith({ seq: 5, isWorking: true, run_id: RUN, messages: [
    serverMessage({ role: "user", content: "q", run_id: RUN }),
    serverMessage({ role: "assistant", content: "A", status: "streaming", run_id: RUN }),
  ] });
  // live events came while the resume was on its way
  deliverAll(v, [
    ["message.delta", { seq: 6, run_id: RUN, delta: "B" }],
    ["message.delta", { seq: 7, run_id: RUN, delta: "C" }],
  ]);
  applyResumed(resumed({ seq: 5, replay: true, messages: [] }));
  assert.equal(v.lastSeq, 7);
  assert.equal(v.messages.length, 2, "replay keeps the view");
  // the server re-sends everything after last_seq, then live events
  deliverAll(v, [
    ["message.delta", { seq: 6, run_id: RUN, delta: "B" }],
    ["message.delta", { seq: 7, run_id: RUN, delta: "C" }],
    ["message.delta", { seq: 8, run_id: RUN, delta: "D" }],
  ]);
  assert.equal(answer(v, RUN), "ABCD");
  assert.equal(v.lastSeq, 8);
});

test("replay answered beyond the view moves it forward", () => {
  const v = openWith({ seq: 5 });
  applyResumed(resumed({ seq: 9, replay: true }));
  assert.equal(v.lastSeq, 9);
});

test("replay after a snapshot: replayed events apply by the seq rule, once each", () => {
  const v = openWith({ seq: 20, isWorking: true, run_id: RUN, messages: [
    serverMessage({ role: "user", content: "q", run_id: RUN }),
    serverMessage({ role: "assistant", content: "one ", status: "streaming", run_id: RUN }),
  ] });
  deliver(v, "message.delta", { seq: 21, run_id: RUN, delta: "two " });
  // disconnected here; events 22..23 were missed; reconnect resumes with last_seq 21
  assert.deepEqual(resumeSent(v), { session_id: SID, last_seq: 21 });
  applyResumed(resumed({ seq: 21, replay: true }));
  deliverAll(v, [
    ["message.delta", { seq: 21, run_id: RUN, delta: "two " }],
    ["message.delta", { seq: 22, run_id: RUN, delta: "three " }],
    ["message.delta", { seq: 23, run_id: RUN, delta: "four" }],
    ["run.completed", { seq: 24, run_id: RUN, output: "one two three four" }],
  ]);
  assert.equal(resumeAnswered(v, { ok: true, seq: 21 }), false);
  assert.equal(answer(v, RUN), "one two three four");
  assert.equal(v.lastSeq, 24);
  assert.equal(v.messages.at(-1).status, "complete");
});

test("a replay answer while a snapshot is awaited keeps waiting for the snapshot", () => {
  const v = openWith({ seq: 5 });
  awaitSnapshot(v);
  applyResumed(resumed({ seq: 5, replay: true }));
  assert.equal(v.lastSeq, null);
  assert.equal(deliver(v, "usage.updated", { seq: 6, inputTokens: 1, outputTokens: 1 }).verdict, "wait");
  applyResumed(resumed({ seq: 6, inputTokens: 1, outputTokens: 1 }));
  assert.equal(v.lastSeq, 6);
});

test("resumed for a view this tab does not keep, or malformed, is ignored", () => {
  openWith({ seq: 1 });
  assert.equal(applyResumed(resumed({ session_id: "s_unknown", seq: 3 })), null);
  assert.equal(applyResumed({ session_id: SID }), null);
  assert.equal(applyResumed(null), null);
  assert.equal(state.views.has("s_unknown"), false);
});

test("a fresh chat applies its first event (seq 1) without any resume", () => {
  const v = freshView("s_new");
  assert.equal(v.fresh, true);
  assert.equal(deliver(v, "run.queued", { seq: 1, queue_length: 0, queue: [] }).verdict, "apply");
  assert.equal(v.lastSeq, 1);
});

test("a load error is kept only while there is no view to show", () => {
  const v = view(SID);
  setLoadError(v, "This chat cannot be opened: forbidden");
  assert.equal(v.loadError, "This chat cannot be opened: forbidden");
  applyResumed(resumed({ seq: 0 })); // not kept: SID is not the open session…
  openView(SID);
  applyResumed(resumed({ seq: 2 }));
  assert.equal(v.loadError, null);
  setLoadError(v, "later failure");
  assert.equal(v.loadError, null, "a view that is shown stays shown");
});
