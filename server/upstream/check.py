"""Prepare and smoke-check an upstream: named stages ending ``ready``, ``degraded`` or
``failed``, with a log of the stages.

Stages: ``resolve`` (the config builds an adapter), ``reach`` (the server answers), ``model``
(the model is there, or loaded — with progress), ``smoke`` (a tiny prompt whose answer is
classified ``ok`` / ``degraded`` / ``failed`` with a reason).
"""

from __future__ import annotations

import re
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from server.errors import ChatrunError, UpstreamCode, UpstreamError
from server.upstream.base import Upstream, UpstreamRequest
from server.upstream.collect import collect_text

SMOKE_PROMPT = "What is the capital of France? Answer with the city name only."
SMOKE_EXPECTED = "paris"
SMOKE_MAX_CHARS = 300
MAX_PROGRESS_POINTS = 20
ROLE_TOKENS = re.compile(
    r"<\|im_(?:start|end)\|>|<\|eot_id\|>|<\|(?:start|end)_header_id\|>|<\|endoftext\|>"
    r"|\[/?INST\]|</s>|<s>|<(?:start|end)_of_turn>|^\s*(?:assistant|user|system)\s*:",
    re.IGNORECASE | re.MULTILINE,
)


@dataclass(slots=True)
class Verdict:
    result: str  # ok | degraded | failed
    reason: str


def classify(answer: str) -> Verdict:
    """Judge a smoke-test answer."""
    text = answer.strip()
    if not text:
        return Verdict("failed", "empty answer")
    if ROLE_TOKENS.search(text):
        return Verdict("degraded", "leaked role tokens in the answer")
    if _runaway(text):
        return Verdict("degraded", "runaway repetition")
    if len(text) > SMOKE_MAX_CHARS:
        return Verdict("degraded", f"far too long for a one-word answer ({len(text)} characters)")
    if SMOKE_EXPECTED not in text.lower():
        return Verdict("degraded", f"missing the expected answer ({SMOKE_EXPECTED!r})")
    return Verdict("ok", "answered as expected")


def _runaway(text: str) -> bool:
    words = text.lower().split()
    if len(words) >= 12:
        _, count = Counter(words).most_common(1)[0]
        if count / len(words) > 0.5:
            return True
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) >= 4:
        _, count = Counter(lines).most_common(1)[0]
        if count >= 4 and count / len(lines) > 0.5:
            return True
    return bool(re.search(r"(.{4,}?)\1{5,}", text, re.DOTALL))


@dataclass(slots=True)
class Stage:
    stage: str
    status: str = "running"  # ok | failed | degraded | skipped
    detail: str = ""
    ms: float = 0.0
    progress: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "stage": self.stage,
            "status": self.status,
            "detail": self.detail,
            "ms": round(self.ms, 1),
        }
        if self.progress:
            out["progress"] = self.progress
        return out


class Check:
    """One prepare-and-smoke run over an upstream."""

    def __init__(self, name: str, smoke_timeout: float) -> None:
        self.name = name
        self.smoke_timeout = smoke_timeout
        self.stages: list[Stage] = []
        self.answer: str | None = None

    async def run(self, build: Any) -> dict[str, Any]:
        """``build()`` returns the adapter (raising ``ChatrunError`` for a bad config)."""
        started = time.time()
        status = "failed"
        verdict: Verdict | None = None
        try:
            with self._stage("resolve") as stage:
                upstream: Upstream = build()
                cfg = upstream.config
                stage.detail = f"{cfg.kind} at {cfg.url}, model {cfg.model or '(server default)'}"
            with self._stage("reach") as stage:
                state = await upstream.health()
                if state == "unreachable":
                    raise UpstreamError(
                        f"no answer from {upstream.config.url}; check that it is running",
                        UpstreamCode.UNAVAILABLE,
                    )
                stage.detail = state
            with self._stage("model") as stage:
                model = await upstream.ensure_model(self._progress(stage))
                stage.detail = model or "(server default)"
            with self._stage("smoke") as stage:
                answer = await collect_text(
                    upstream,
                    UpstreamRequest(
                        session_id=f"smoke-{uuid.uuid4().hex[:12]}",
                        input=SMOKE_PROMPT,
                        history=[],
                        instructions=None,
                        model=None,
                    ),
                    self.smoke_timeout,
                )
                self.answer = answer.text
                verdict = classify(answer.text)
                stage.status = "ok" if verdict.result == "ok" else verdict.result
                stage.detail = verdict.reason
            assert verdict is not None
            status = {"ok": "ready", "degraded": "degraded"}.get(verdict.result, "failed")
        except _StageFailed:
            pass
        return {
            "status": status,
            "smoke": verdict.result if verdict else None,
            "reason": verdict.reason if verdict else self._failure(),
            "answer": (self.answer or "")[:500] if self.answer is not None else None,
            "stages": [s.as_dict() for s in self.stages],
            "checked_at": started,
            "duration_ms": round((time.time() - started) * 1000, 1),
        }

    def _failure(self) -> str:
        failed = next((s for s in self.stages if s.status == "failed"), None)
        return f"{failed.stage}: {failed.detail}" if failed else ""

    @staticmethod
    def _progress(stage: Stage) -> Any:
        def report(value: float) -> None:
            if len(stage.progress) < MAX_PROGRESS_POINTS or value >= 1.0:
                stage.progress.append(round(max(0.0, min(1.0, value)), 3))

        return report

    def _stage(self, name: str) -> _StageContext:
        stage = Stage(name)
        self.stages.append(stage)
        return _StageContext(stage)


class _StageFailed(Exception):
    pass


class _StageContext:
    def __init__(self, stage: Stage) -> None:
        self.stage = stage
        self._start = 0.0

    def __enter__(self) -> Stage:
        self._start = time.perf_counter()
        return self.stage

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        self.stage.ms = (time.perf_counter() - self._start) * 1000
        if exc is None:
            if self.stage.status == "running":
                self.stage.status = "ok"
        elif isinstance(exc, ChatrunError):
            self.stage.status = "failed"
            self.stage.detail = exc.message
            raise _StageFailed from exc
