// The user's pending messages: the outbox of `run` emits, the queue the server reports, cancel,
// acks (queued or started), how a snapshot reconciles them, and the Stop button's state.

import { test, beforeEach } from "node:test";
import assert from "node:assert/strict";

import {
  state, view, enqueueRun, nextRun, runEmitted, runOffline, runRefused, applyRunAck, queueItems,
  cancelStarted, cancelAnswered, abortRequested, abortAnswered, applyUnnumbered, applyResumed,
  awaitSnapshot, resetState, openView, forgetSession, removeOutgoing,
} from "../../static/js/store.js";
import { SID, deliver, openWith, resumed, roles, serverMessage } from "./helpers.mjs";

const RUN = "run_" + "1".repeat(32);
const RUN2 = "run_" + "2".repeat(32);
const RUN3 = "run_" + "3".repeat(32);

beforeEach(() => resetState());

const phases = (v) => queueItems(v).map((i) => `${i.queue_id}:${i.phase}`);

test("a sent message shows at once, as sending, and waits in the outbox", () => {
  const v = openWith({ seq: 0 });
  const item = enqueueRun(SID, "q_1", "hello");
  assert.deepEqual(queueItems(v), [{ queue_id: "q_1", text: "hello", phase: "sending", cancellable: true, cancelling: false }]);
  assert.deepEqual(nextRun(), { sessionId: SID, item, v });
});

test("the outbox keeps the order typed, across chats", () => {
  openWith({ seq: 0 });
  const a = enqueueRun(SID, "q_a", "first");
  const b = enqueueRun("s_other", "q_b", "second");
  const c = enqueueRun(SID, "q_c", "third");
  const seen = [];
  for (let next = nextRun(); next; next = nextRun()) {
    seen.push(next.item);
    applyRunAck(next.v, next.item, { ok: true, run_id: `run_${seen.length}`, queued: true });
  }
  assert.deepEqual(seen, [a, b, c]);
  assert.equal(state.outbox.length, 0);
});

test("the outbox skips messages that are gone (removed, or their chat deleted)", () => {
  openWith({ seq: 0 });
  const a = enqueueRun(SID, "q_a", "gone");
  enqueueRun("s_deleted", "q_b", "chat deleted");
  const c = enqueueRun(SID, "q_c", "kept");
  removeOutgoing(view(SID), a.queue_id);
  forgetSession("s_deleted");
  assert.equal(nextRun().item, c);
  assert.equal(state.outbox.length, 1);
});

test("an emit counts as a try; an emit that found no connection does not", () => {
  const v = openWith({ seq: 0 });
  const item = enqueueRun(SID, "q_1", "x");
  runEmitted(item);
  runEmitted(item);
  assert.equal(item.tries, 2);
  assert.equal(item.emitted, true);
  runOffline(item);
  assert.equal(item.tries, 1);
  assert.equal(nextRun().item, item, "still waiting to be sent");
  // on its way: cancelling it is no longer a local decision
  assert.equal(queueItems(v)[0].cancellable, false);
});

test("a refused run is dropped from the queue area and the outbox", () => {
  const v = openWith({ seq: 0 });
  const item = enqueueRun(SID, "q_1", "x");
  runEmitted(item);
  runRefused(v, item);
  assert.deepEqual(queueItems(v), []);
  assert.equal(nextRun(), null);
});

test("ack queued: the message waits as queued, cancellable, and leaves the outbox", () => {
  const v = openWith({ seq: 0 });
  v.fresh = true;
  const item = enqueueRun(SID, "q_1", "later");
  runEmitted(item);
  applyRunAck(v, item, { ok: true, session_id: SID, run_id: RUN2, queue_id: "q_1", queued: true, position: 1 });
  assert.equal(item.run_id, RUN2);
  assert.equal(v.fresh, false, "the session exists on the server now");
  assert.deepEqual(phases(v), ["q_1:queued"]);
  assert.equal(queueItems(v)[0].cancellable, true);
  assert.equal(nextRun(), null);
});

test("ack started: the question and an answer placeholder show right away", () => {
  const v = openWith({ seq: 0 });
  const item = enqueueRun(SID, "q_1", "now");
  runEmitted(item);
  applyRunAck(v, item, { ok: true, run_id: RUN, queue_id: "q_1", queued: false, position: 0 });
  assert.deepEqual(roles(v), ["user", "assistant"]);
  assert.equal(v.messages[1].status, "streaming");
  assert.equal(v.working, true);
  assert.equal(v.runId, RUN);
  assert.deepEqual(queueItems(v), []);
  // run.started then finds the question already there: nothing twice
  deliver(v, "run.started", { seq: 1, run_id: RUN, status: "started", queue_length: 0, queue_id: "q_1" });
  assert.deepEqual(roles(v), ["user", "assistant"]);
});

test("ack started after run.started placed it: nothing twice", () => {
  const v = openWith({ seq: 0 });
  const item = enqueueRun(SID, "q_1", "now");
  runEmitted(item);
  deliver(v, "run.started", { seq: 1, run_id: RUN, status: "started", queue_length: 0, queue_id: "q_1" });
  applyRunAck(v, item, { ok: true, run_id: RUN, queue_id: "q_1", queued: false });
  assert.deepEqual(roles(v), ["user", "assistant"]);
});

test("ack started while a snapshot is awaited: the snapshot will show it", () => {
  const v = openWith({ seq: 3 });
  awaitSnapshot(v);
  const item = enqueueRun(SID, "q_1", "now");
  applyRunAck(v, item, { ok: true, run_id: RUN, queued: false });
  assert.equal(v.messages.length, 0);
  assert.equal(v.outgoing.length, 0);
});

test("run.queued lists the server's queue with our full text, in order", () => {
  const v = openWith({ seq: 0, isWorking: true, run_id: RUN });
  const a = enqueueRun(SID, "q_a", "second, with the whole text");
  const b = enqueueRun(SID, "q_b", "third");
  for (const [item, run] of [[a, RUN2], [b, RUN3]]) applyRunAck(v, item, { ok: true, run_id: run, queued: true });
  deliver(v, "run.queued", { seq: 1, queue_length: 3, queue_id: "q_b", queue: [
    { queue_id: "q_x", run_id: "run_x", preview: "from another tab" },
    { queue_id: "q_a", run_id: RUN2, preview: "second, with…" },
    { queue_id: "q_b", run_id: RUN3, preview: "third" },
  ] });
  assert.deepEqual(queueItems(v).map((i) => i.text), ["from another tab", "second, with the whole text", "third"]);
  assert.deepEqual(phases(v), ["q_x:queued", "q_a:queued", "q_b:queued"]);
});

test("off the queue between runs: starting; during a run: it was cancelled elsewhere", () => {
  const v = openWith({ seq: 0, isWorking: true, run_id: RUN });
  const a = enqueueRun(SID, "q_a", "a");
  const b = enqueueRun(SID, "q_b", "b");
  applyRunAck(v, a, { ok: true, run_id: RUN2, queued: true });
  applyRunAck(v, b, { ok: true, run_id: RUN3, queued: true });
  deliver(v, "run.queued", { seq: 1, queue_length: 1, queue: [{ queue_id: "q_b", run_id: RUN3, preview: "b" }] });
  assert.deepEqual(phases(v), ["q_b:queued"], "q_a was cancelled in another tab");
  deliver(v, "run.completed", { seq: 2, run_id: RUN, output: "" });
  deliver(v, "run.queued", { seq: 3, queue_length: 0, queue: [] });
  assert.deepEqual(phases(v), ["q_b:starting"]);
  assert.equal(queueItems(v)[0].cancellable, false);
  deliver(v, "run.started", { seq: 4, run_id: RUN3, status: "started", queue_length: 0, queue_id: "q_b" });
  assert.deepEqual(phases(v), []);
  assert.equal(v.messages.at(-2).content, "b");
});

test("cancel before the message left this tab: removed here, never sent", () => {
  const v = openWith({ seq: 0 });
  enqueueRun(SID, "q_1", "oops");
  assert.equal(cancelStarted(v, "q_1"), "local");
  assert.deepEqual(queueItems(v), []);
  assert.equal(nextRun(), null);
});

test("cancel of a queued message asks the server once and shows it cancelling", () => {
  const v = openWith({ seq: 0, isWorking: true, run_id: RUN });
  const item = enqueueRun(SID, "q_1", "second");
  runEmitted(item);
  applyRunAck(v, item, { ok: true, run_id: RUN2, queued: true });
  assert.equal(cancelStarted(v, "q_1"), "send");
  assert.equal(queueItems(v)[0].cancelling, true);
  assert.equal(cancelStarted(v, "q_1"), "pending", "a second click sends nothing");
  cancelAnswered(v, "q_1", { ok: true, cancelled: true });
  assert.deepEqual(queueItems(v), []);
  assert.equal(v.cancelling.size, 0);
});

test("cancel of a message from another tab removes it from the server queue", () => {
  const v = openWith({ seq: 2, isWorking: true, run_id: RUN, queue: [
    { queue_id: "q_x", run_id: RUN2, preview: "theirs" },
    { queue_id: "q_y", run_id: RUN3, preview: "also theirs" },
  ] });
  assert.equal(cancelStarted(v, "q_x"), "send");
  cancelAnswered(v, "q_x", { ok: true, cancelled: true });
  assert.deepEqual(phases(v), ["q_y:queued"]);
});

test("a cancel refused, or too late, keeps the message", () => {
  const v = openWith({ seq: 0, isWorking: true, run_id: RUN });
  const item = enqueueRun(SID, "q_1", "second");
  runEmitted(item);
  applyRunAck(v, item, { ok: true, run_id: RUN2, queued: true });
  cancelStarted(v, "q_1");
  cancelAnswered(v, "q_1", { ok: false, error: { code: "offline", message: "Not connected." } });
  assert.deepEqual(phases(v), ["q_1:queued"]);
  assert.equal(queueItems(v)[0].cancelling, false);
  cancelStarted(v, "q_1");
  cancelAnswered(v, "q_1", { ok: true, cancelled: false }); // it had started already
  assert.deepEqual(phases(v), ["q_1:queued"]);
});

test("a snapshot reconciles this tab's messages with the server", () => {
  const v = openWith({ seq: 0 });
  const inTranscript = enqueueRun(SID, "q_1", "answered");
  const stillQueued = enqueueRun(SID, "q_2", "waiting");
  const cancelled = enqueueRun(SID, "q_3", "cancelled elsewhere");
  const unsent = enqueueRun(SID, "q_4", "not acknowledged yet");
  applyRunAck(v, inTranscript, { ok: true, run_id: RUN, queued: true });
  applyRunAck(v, stillQueued, { ok: true, run_id: RUN2, queued: true });
  applyRunAck(v, cancelled, { ok: true, run_id: RUN3, queued: true });
  runEmitted(unsent);
  applyResumed(resumed({
    seq: 9, isWorking: true, run_id: RUN,
    messages: [
      serverMessage({ role: "user", content: "answered", run_id: RUN }),
      serverMessage({ role: "assistant", status: "streaming", run_id: RUN }),
    ],
    queue: [{ queue_id: "q_2", run_id: RUN2, preview: "waiting" }],
  }));
  assert.deepEqual(v.outgoing.map((o) => o.queue_id), ["q_2", "q_4"]);
  assert.deepEqual(phases(v), ["q_2:queued", "q_4:sending"]);
});

test("Stop: only while working and not already stopping", () => {
  const v = openWith({ seq: 0 });
  assert.equal(abortRequested(v), false);
  assert.equal(abortRequested(null), false);
  v.working = true;
  assert.equal(abortRequested(v), true);
  assert.equal(v.aborting, true);
  assert.equal(abortRequested(v), false, "one abort at a time");
});

test("the abort ack: accepted keeps stopping; refused or nothing running clears it", () => {
  const v = openWith({ seq: 0, isWorking: true, run_id: RUN });
  abortRequested(v);
  abortAnswered(v, { ok: true, aborting: true });
  assert.equal(v.aborting, true);
  abortAnswered(v, { ok: true, aborting: false });
  assert.equal(v.aborting, false);
  abortRequested(v);
  abortAnswered(v, { ok: false, error: { code: "forbidden", message: "no" } });
  assert.equal(v.aborting, false);
});

test("the un-numbered abort.completed clears stopping; other un-numbered events do nothing", () => {
  const v = openWith({ seq: 0, isWorking: true, run_id: RUN });
  abortRequested(v);
  assert.equal(applyUnnumbered(v, "run.queued"), false);
  assert.equal(v.aborting, true);
  assert.equal(applyUnnumbered(v, "abort.completed"), true);
  assert.equal(v.aborting, false);
  assert.equal(v.lastSeq, 0, "seq is not touched");
});

test("cancel in a view that is not the open one works on that view", () => {
  openWith({ seq: 0 });
  const other = openView("s_other");
  openView(SID);
  enqueueRun("s_other", "q_1", "x");
  assert.equal(cancelStarted(other, "q_1"), "local");
  assert.equal(view(SID).outgoing.length, 0);
});
