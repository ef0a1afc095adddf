// Shared fixtures for the store tests: resumed answers, server messages and event delivery the
// way app.js does it (gate first, apply only what the seq rule lets through).

import { applyEvent, applyResumed, openView, receive, resetState } from "../../static/js/store.js";

export const SID = "s_test";

let nextId = 1;

/** A message as `resumed.messages` / GET …/messages carry it (PROTOCOL.md §4). */
export function serverMessage(fields) {
  return {
    id: nextId++, session_id: SID, role: "assistant", content: "", reasoning: "",
    timestamp: 1700000000, status: "complete", run_id: null, ...fields,
  };
}

/** A `resumed` answer; snapshot mode unless `replay: true` is given. */
export function resumed(fields = {}) {
  return {
    event: "resumed", session_id: SID, seq: 0, messages: [], isWorking: false, isAborting: false,
    events: [], inputTokens: 0, outputTokens: 0, queueLength: 0, queue: [], replay: false, ...fields,
  };
}

/** A clean store with SID open and standing on the given snapshot. */
export function openWith(fields = {}) {
  resetState();
  const v = openView(SID);
  applyResumed(resumed(fields));
  return v;
}

/** Deliver one numbered event to a view as the controller does; returns the gate's verdict. */
export function deliver(v, name, fields) {
  const data = { event: name, session_id: v.id, ...fields };
  const verdict = receive(v, data.seq);
  if (verdict !== "apply") return { verdict };
  return { verdict, ...applyEvent(v, name, data) };
}

/** Deliver a list of [name, fields] in order. */
export function deliverAll(v, events) {
  return events.map(([name, fields]) => deliver(v, name, fields));
}

/** The answer text of a run as the transcript shows it (all its assistant segments). */
export function answer(v, runId) {
  return v.messages.filter((m) => m.run_id === runId && m.role === "assistant").map((m) => m.content).join("");
}

export const roles = (v) => v.messages.map((m) => m.role);
