// Events about a session itself (session.deleted / session.renamed, unnumbered), the usage
// gauge across runs and resumes, reading a long message in parts, and failed answers.

import { test, beforeEach } from "node:test";
import assert from "node:assert/strict";

import {
  applyResumed, applyRunAck, enqueueRun, isDeleted, nextRun, openView, resetState, retryText,
  sessionDeleted, sessionRenamed, setSessions, state, view, SIZE_CODES,
} from "../../static/js/store.js";
import { SID, deliver, deliverAll, openWith, resumed, serverMessage } from "./helpers.mjs";

const RUN = "run_" + "1".repeat(32);
const RUN2 = "run_" + "2".repeat(32);

beforeEach(() => resetState());

function listed(...ids) {
  setSessions(ids.map((id) => ({ id, title: `title of ${id}`, preview: "", updated_at: 1, status: "idle" })), null);
}

test("session.deleted forgets the chat, drops its unsent messages and refuses new ones", () => {
  const v = openWith({ seq: 3 });
  listed(SID, "other");
  enqueueRun(SID, "q_1", "never to be sent");
  enqueueRun("other", "q_2", "for another chat");
  const out = sessionDeleted(SID);
  assert.deepEqual(out, { known: true, wasOpen: true, title: `title of ${SID}` });
  assert.deepEqual(state.sessions.map((s) => s.id), ["other"]);
  assert.equal(state.views.has(SID), false);
  assert.equal(isDeleted(SID), true);
  assert.equal(nextRun().sessionId, "other", "the deleted chat's message is gone from the outbox");
  assert.equal(enqueueRun(SID, "q_3", "again"), null, "a deleted chat is never sent to again");
  assert.equal(v.outgoing.length, 1, "the dropped view is not touched again");
});

test("session.deleted of a chat this tab does not show only updates the list", () => {
  openWith({ seq: 1 });
  listed(SID, "other");
  assert.deepEqual(sessionDeleted("other"), { known: true, wasOpen: false, title: "title of other" });
  assert.deepEqual(state.sessions.map((s) => s.id), [SID]);
  assert.equal(state.current, SID);
  assert.equal(sessionDeleted("never-heard-of").known, false);
});

test("session.renamed changes the title and says whether it was the open chat", () => {
  openWith({ seq: 1 });
  listed(SID, "other");
  assert.deepEqual(sessionRenamed(SID, "New name"), { changed: true, wasOpen: true, before: `title of ${SID}` });
  assert.equal(state.sessions[0].title, "New name");
  assert.deepEqual(sessionRenamed(SID, "New name"), { changed: false, wasOpen: true, before: "New name" });
  assert.equal(sessionRenamed("other", "").changed, false, "a blank title is ignored");
  assert.equal(state.sessions[1].title, "title of other");
});

test("a snapshot below where the view stands means the chat was deleted while away", () => {
  const v = openWith({ seq: 30, messages: [serverMessage({ role: "user", content: "hi" })] });
  applyResumed(resumed({ seq: 0 }));
  assert.equal(v.gone, true);
  assert.equal(v.lastSeq, 30, "the view is left as it was for the caller to close");
  assert.equal(v.messages.length, 1);
});

test("resumed carries the context gauge; an idle session shows its last totals", () => {
  const v = openWith({ seq: 9, inputTokens: 120, outputTokens: 30, contextTokens: 700, contextLimit: 8192 });
  assert.deepEqual(v.usage, { inputTokens: 120, outputTokens: 30, contextTokens: 700, contextLimit: 8192 });
});

test("resumed mid-run shows the gauge but not the previous run's totals", () => {
  const v = openWith({ seq: 9, isWorking: true, run_id: RUN, inputTokens: 120, outputTokens: 30, contextTokens: 700, contextLimit: 8192 });
  assert.deepEqual(v.usage, { contextTokens: 700, contextLimit: 8192 });
});

test("while a run streams the header drops the previous totals; the run's own show at its end", () => {
  const v = openWith({ seq: 1, inputTokens: 100, outputTokens: 20, contextTokens: 500, contextLimit: 4000 });
  deliver(v, "run.started", { seq: 2, run_id: RUN, status: "started", queue_length: 0 });
  assert.deepEqual(v.usage, { contextTokens: 500, contextLimit: 4000 });
  // compression before the answer repeats the previous run's totals: not shown as this run's
  deliver(v, "usage.updated", { seq: 3, run_id: RUN, inputTokens: 100, outputTokens: 20, contextTokens: 300, contextLimit: 4000 });
  assert.deepEqual(v.usage, { contextTokens: 300, contextLimit: 4000 });
  deliverAll(v, [
    ["message.delta", { seq: 4, run_id: RUN, delta: "answer" }],
    ["usage.updated", { seq: 5, run_id: RUN, inputTokens: 340, outputTokens: 7, contextTokens: 360, contextLimit: 4000 }],
  ]);
  assert.deepEqual(v.usage, { contextTokens: 360, contextLimit: 4000 }, "not before the run's end");
  deliver(v, "run.completed", { seq: 6, run_id: RUN, output: "answer", queue_remaining: 0 });
  assert.deepEqual(v.usage, { inputTokens: 340, outputTokens: 7, contextTokens: 360, contextLimit: 4000 });
});

test("a run this tab starts drops the previous totals as soon as it is acknowledged", () => {
  const v = openWith({ seq: 1, inputTokens: 100, outputTokens: 20, contextTokens: 500, contextLimit: 4000 });
  const item = enqueueRun(SID, "q_1", "question");
  applyRunAck(v, item, { ok: true, run_id: RUN, queue_id: "q_1", queued: false, position: 0 });
  assert.deepEqual(v.usage, { contextTokens: 500, contextLimit: 4000 });
});

test("usage after compact (no run) updates the totals at once", () => {
  const v = openWith({ seq: 1, inputTokens: 100, outputTokens: 20 });
  deliver(v, "usage.updated", { seq: 2, inputTokens: 100, outputTokens: 20, contextTokens: 90, contextLimit: 4000 });
  assert.deepEqual(v.usage, { inputTokens: 100, outputTokens: 20, contextTokens: 90, contextLimit: 4000 });
});

test("context.chunking shows how far a long message has been read, until the answer starts", () => {
  const v = openWith({ seq: 1, isWorking: true, run_id: RUN });
  deliver(v, "context.chunking", { seq: 2, run_id: RUN, done: 0, total: 5 });
  assert.deepEqual(v.chunking, { done: 0, total: 5 });
  deliver(v, "context.chunking", { seq: 3, run_id: RUN, done: 2, total: 5 });
  assert.deepEqual(v.chunking, { done: 2, total: 5 });
  deliver(v, "context.chunking", { seq: 4, run_id: RUN, done: "x", total: 5 });
  assert.deepEqual(v.chunking, { done: 2, total: 5 }, "a malformed event changes nothing");
  deliver(v, "run.started", { seq: 5, run_id: RUN, status: "started", queue_length: 0 });
  assert.equal(v.chunking, null);
});

test("a refresh while a message is read in parts shows the progress so far", () => {
  const v = openWith({
    seq: 3, isWorking: true, run_id: RUN,
    events: [
      { event: "context.chunking", data: { run_id: RUN, done: 0, total: 4 } },
      { event: "context.chunking", data: { run_id: RUN, done: 1, total: 4 } },
    ],
  });
  assert.deepEqual(v.chunking, { done: 1, total: 4 });
  deliver(v, "run.failed", { seq: 4, run_id: RUN, error: "too big", code: "input_too_large", queue_remaining: 0 });
  assert.equal(v.chunking, null, "the run ended");
});

test("a failed answer keeps its code, live and from a snapshot; Retry sends its question again", () => {
  const v = openWith({ seq: 1, isWorking: true, run_id: RUN, messages: [
    serverMessage({ role: "user", content: "a very long question", run_id: RUN }),
    serverMessage({ role: "assistant", content: "", status: "streaming", run_id: RUN }),
  ] });
  const out = deliver(v, "run.failed", { seq: 2, run_id: RUN, error: "context window exceeded", code: "context_exceeded", queue_remaining: 0 });
  assert.equal(out.ended, "failed");
  const answer = v.messages[1];
  assert.equal(answer.errorCode, "context_exceeded");
  assert.ok(SIZE_CODES.has(answer.errorCode));
  assert.equal(retryText(v, RUN), "a very long question");
  assert.equal(retryText(v, RUN2), null);

  const again = openWith({ seq: 2, messages: [
    serverMessage({ role: "user", content: "q", run_id: RUN2 }),
    serverMessage({ role: "assistant", status: "failed", run_id: RUN2, error: "too large", error_code: "input_too_large" }),
  ] });
  assert.equal(again.messages[1].errorCode, "input_too_large");
});

test("terminal events say how the answer ended (for the one announcement)", () => {
  const v = openWith({ seq: 0 });
  const item = enqueueRun(SID, "q_1", "question");
  applyRunAck(v, item, { ok: true, run_id: RUN, queue_id: "q_1", queued: false, position: 0 });
  assert.equal(deliver(v, "message.delta", { seq: 1, run_id: RUN, delta: "x" }).ended, null);
  assert.equal(deliver(v, "run.completed", { seq: 2, run_id: RUN, output: "x", queue_remaining: 0 }).ended, "complete");
});

test("a deleted chat stays refused after its view is opened again (history back)", () => {
  openWith({ seq: 1 });
  listed(SID);
  sessionDeleted(SID);
  openView(SID);
  assert.equal(enqueueRun(SID, "q_9", "hello"), null);
  assert.equal(view(SID).outgoing.length, 0);
});
