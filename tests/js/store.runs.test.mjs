// A run's life as the events tell it (PROTOCOL.md §3): started, deltas (possibly coalesced),
// reasoning, tools, and exactly one terminal event; usage and the active run's state events.

import { test, beforeEach } from "node:test";
import assert from "node:assert/strict";

import { applyRunAck, enqueueRun, resetState } from "../../static/js/store.js";
import { SID, answer, deliver, deliverAll, openWith, roles, serverMessage } from "./helpers.mjs";

const RUN = "run_" + "1".repeat(32);
const RUN2 = "run_" + "2".repeat(32);

beforeEach(() => resetState());

/** A view where this tab sent "question" and the server queued it as RUN (seq 1). */
function sentAndQueued() {
  const v = openWith({ seq: 0 });
  const item = enqueueRun(SID, "q_1", "question");
  applyRunAck(v, item, { ok: true, session_id: SID, run_id: RUN, queue_id: "q_1", queued: true, position: 0 });
  return v;
}

function started(v, seq = v.lastSeq + 1) {
  return deliver(v, "run.started", { seq, run_id: RUN, status: "started", queue_length: 0, queue_id: "q_1" });
}

test("run.started moves this tab's message into the transcript with a streaming answer", () => {
  const v = sentAndQueued();
  const out = started(v, 1);
  assert.equal(out.snapshot, false);
  assert.equal(out.sessions, true);
  assert.deepEqual(roles(v), ["user", "assistant"]);
  assert.equal(v.messages[0].content, "question");
  assert.equal(v.messages[1].status, "streaming");
  assert.equal(v.working, true);
  assert.equal(v.runId, RUN);
  assert.equal(v.outgoing.length, 0);
});

test("a run's text is assembled from coalesced deltas, in order", () => {
  const v = sentAndQueued();
  started(v, 1);
  deliverAll(v, [
    ["message.delta", { seq: 2, run_id: RUN, delta: "Hel", timestamp: 1 }],
    ["message.delta", { seq: 3, run_id: RUN, delta: "lo, wor", timestamp: 2 }], // coalesced
    ["message.delta", { seq: 4, run_id: RUN, delta: "", timestamp: 3 }], // empty: nothing
    ["message.delta", { seq: 5, run_id: RUN, delta: "ld!\n", timestamp: 4 }],
  ]);
  assert.equal(answer(v, RUN), "Hello, world!\n");
  assert.equal(v.messages.filter((m) => m.role === "assistant").length, 1, "one segment");
  assert.equal(v.lastSeq, 5);
});

test("every change of a message bumps its revision (the renderer rebuilds on it)", () => {
  const v = sentAndQueued();
  started(v, 1);
  const seg = v.messages[1];
  const before = seg.rev;
  deliver(v, "message.delta", { seq: 2, run_id: RUN, delta: "x" });
  assert.ok(seg.rev > before);
});

test("reasoning.delta accumulates; reasoning.available does not overwrite it", () => {
  const v = sentAndQueued();
  started(v, 1);
  deliverAll(v, [
    ["reasoning.delta", { seq: 2, run_id: RUN, text: "Think " }],
    ["reasoning.delta", { seq: 3, run_id: RUN, text: "hard." }],
    ["reasoning.available", { seq: 4, run_id: RUN, text: "something else" }],
    ["message.delta", { seq: 5, run_id: RUN, delta: "Answer" }],
  ]);
  const seg = v.messages[1];
  assert.equal(seg.reasoning, "Think hard.");
  assert.equal(seg.content, "Answer");
});

test("reasoning.available alone gives the segment its reasoning", () => {
  const v = sentAndQueued();
  started(v, 1);
  deliver(v, "reasoning.available", { seq: 2, run_id: RUN, text: "All at once." });
  assert.equal(v.messages[1].reasoning, "All at once.");
});

test("a tool call closes the segment; its result completes it; the next text opens a new one", () => {
  const v = sentAndQueued();
  started(v, 1);
  deliverAll(v, [
    ["message.delta", { seq: 2, run_id: RUN, delta: "Let me check." }],
    ["tool.started", { seq: 3, run_id: RUN, tool: "terminal", name: "terminal", preview: "ls -la", tool_call_id: "c1" }],
  ]);
  assert.deepEqual(roles(v), ["user", "assistant", "tool"]);
  assert.equal(v.messages[1].status, "complete");
  assert.equal(v.messages[1].tool_calls[0].function.name, "terminal");
  const tool = v.messages[2];
  assert.equal(tool.status, "streaming");
  assert.equal(tool.preview, "ls -la");
  deliverAll(v, [
    ["tool.completed", { seq: 4, run_id: RUN, tool: "terminal", duration: 0.25, error: false, output: "total 0", tool_call_id: "c1" }],
    ["message.delta", { seq: 5, run_id: RUN, delta: "Here it is." }],
  ]);
  assert.equal(tool.status, "complete");
  assert.equal(tool.content, "total 0");
  assert.equal(tool.duration, 0.25);
  assert.deepEqual(roles(v), ["user", "assistant", "tool", "assistant"]);
  assert.equal(v.messages[3].content, "Here it is.");
  assert.equal(answer(v, RUN), "Let me check.Here it is.");
});

test("tool.completed finds its call by tool_call_id, or by name; an error marks it failed", () => {
  const v = sentAndQueued();
  started(v, 1);
  deliverAll(v, [
    ["tool.started", { seq: 2, run_id: RUN, tool: "read", preview: "a", tool_call_id: "c1" }],
    ["tool.started", { seq: 3, run_id: RUN, tool: "read", preview: "b", tool_call_id: "c2" }],
    ["tool.completed", { seq: 4, run_id: RUN, tool: "read", duration: 1, error: true, tool_call_id: "c2" }],
  ]);
  const tools = v.messages.filter((m) => m.role === "tool");
  assert.deepEqual(tools.map((t) => t.status), ["streaming", "failed"]);
  deliver(v, "tool.completed", { seq: 5, run_id: RUN, tool: "read", duration: 1, error: false });
  assert.deepEqual(tools.map((t) => t.status), ["complete", "failed"]);
});

test("run.completed ends the run: complete, not working any more", () => {
  const v = sentAndQueued();
  started(v, 1);
  deliver(v, "message.delta", { seq: 2, run_id: RUN, delta: "Done." });
  deliver(v, "usage.updated", { seq: 3, inputTokens: 12, outputTokens: 3 });
  const out = deliver(v, "run.completed", { seq: 4, run_id: RUN, output: "Done.", usage: {}, queue_remaining: 0 });
  assert.equal(out.sessions, true);
  assert.equal(out.snapshot, false);
  assert.equal(v.messages[1].status, "complete");
  assert.equal(answer(v, RUN), "Done.", "the streamed text is not doubled by `output`");
  assert.equal(v.working, false);
  assert.equal(v.runId, null);
});

test("run.completed with nothing streamed shows its output (parsed_content first)", () => {
  const v = sentAndQueued();
  started(v, 1);
  deliver(v, "run.completed", { seq: 2, run_id: RUN, output: "raw", parsed_content: "parsed" });
  assert.equal(answer(v, RUN), "parsed");
  const w = openWith({ seq: 0 });
  const item = enqueueRun(SID, "q_1", "question");
  applyRunAck(w, item, { ok: true, run_id: RUN, queued: true });
  started(w, 1);
  deliver(w, "run.completed", { seq: 2, run_id: RUN, output: "only output" });
  assert.equal(answer(w, RUN), "only output");
});

test("run.failed keeps the text and shows the error on the answer", () => {
  const v = sentAndQueued();
  started(v, 1);
  deliverAll(v, [
    ["message.delta", { seq: 2, run_id: RUN, delta: "Starting" }],
    ["run.failed", { seq: 3, run_id: RUN, error: "model crashed", queue_remaining: 0, code: "upstream_error" }],
  ]);
  const seg = v.messages[1];
  assert.equal(seg.status, "failed");
  assert.equal(seg.error, "model crashed");
  assert.equal(seg.content, "Starting");
  assert.equal(v.working, false);
});

test("run.failed with code interrupted marks the answer interrupted", () => {
  const v = sentAndQueued();
  started(v, 1);
  deliver(v, "run.failed", { seq: 2, run_id: RUN, error: "server stopped", code: "interrupted" });
  assert.equal(v.messages[1].status, "interrupted");
});

test("a run refused before it started still shows its question and the failure", () => {
  const v = sentAndQueued();
  deliver(v, "run.failed", { seq: 1, run_id: RUN, error: "Cannot reach the upstream", code: "upstream_unavailable" });
  assert.deepEqual(roles(v), ["user", "assistant"]);
  assert.equal(v.messages[0].content, "question");
  assert.equal(v.messages[1].status, "failed");
  assert.equal(v.outgoing.length, 0);
});

test("abort: abort.started marks aborting; run.cancelled ends the run as aborted", () => {
  const v = sentAndQueued();
  started(v, 1);
  deliverAll(v, [
    ["message.delta", { seq: 2, run_id: RUN, delta: "part" }],
    ["abort.started", { seq: 3, run_id: RUN, graceMs: 3000 }],
  ]);
  assert.equal(v.aborting, true);
  deliver(v, "run.cancelled", { seq: 4, run_id: RUN, queue_remaining: 0 });
  assert.equal(v.messages[1].status, "aborted");
  assert.equal(v.messages[1].content, "part");
  assert.equal(v.aborting, false);
  assert.equal(v.working, false);
  deliver(v, "abort.started", { seq: 5, run_id: RUN, graceMs: 1 });
  deliver(v, "abort.completed", { seq: 6, run_id: RUN, synced: true });
  assert.equal(v.aborting, false);
});

test("a run started from another tab cannot be placed: the view asks for a snapshot", () => {
  const v = openWith({ seq: 0 });
  const out = deliver(v, "run.started", { seq: 1, run_id: RUN2, status: "started", queue_length: 0, queue_id: "q_elsewhere" });
  assert.equal(out.snapshot, true);
  assert.equal(v.working, true);
});

test("the end of an older run does not end the active one", () => {
  const v = openWith({ seq: 5, isWorking: true, run_id: RUN2, messages: [
    serverMessage({ role: "user", content: "old", run_id: RUN }),
    serverMessage({ role: "assistant", content: "x", status: "streaming", run_id: RUN }),
    serverMessage({ role: "user", content: "new", run_id: RUN2 }),
    serverMessage({ role: "assistant", content: "", status: "streaming", run_id: RUN2 }),
  ] });
  deliver(v, "run.failed", { seq: 6, run_id: RUN, error: "late", code: "interrupted" });
  assert.equal(v.working, true);
  assert.equal(v.runId, RUN2);
  assert.equal(v.messages[1].status, "interrupted");
  assert.equal(v.messages[3].status, "streaming");
});

test("usage.updated merges the counts it carries and ignores what is not a number", () => {
  const v = openWith({ seq: 0 });
  deliver(v, "usage.updated", { seq: 1, inputTokens: 100, outputTokens: 20, contextTokens: 120, contextLimit: 8192 });
  assert.deepEqual(v.usage, { inputTokens: 100, outputTokens: 20, contextTokens: 120, contextLimit: 8192 });
  deliver(v, "usage.updated", { seq: 2, inputTokens: 150, outputTokens: 30, contextTokens: "lots" });
  assert.deepEqual(v.usage, { inputTokens: 150, outputTokens: 30, contextTokens: 120, contextLimit: 8192 });
});

test("compression events set the notice; run.started clears it", () => {
  const v = sentAndQueued();
  deliver(v, "compression.started", { seq: 1, message_count: 10, token_count: 5000 });
  assert.equal(v.notice.busy, true);
  deliver(v, "compression.completed", { seq: 2, compressed: true, totalMessages: 10, resultMessages: 3, beforeTokens: 5000, afterTokens: 900 });
  assert.match(v.notice.text, /10 → 3 messages, 5000 → 900 tokens/);
  deliver(v, "compression.completed", { seq: 3, compressed: false, error: "summary failed" });
  assert.equal(v.notice.error, true);
  started(v, 4);
  assert.equal(v.notice, null);
});

test("an event this client does not know still advances seq", () => {
  const v = openWith({ seq: 3 });
  assert.equal(deliver(v, "approval.request", { seq: 4, run_id: RUN }).verdict, "apply");
  assert.equal(v.lastSeq, 4);
  assert.equal(deliver(v, "usage.updated", { seq: 5, inputTokens: 1, outputTokens: 1 }).verdict, "apply");
});
