"""Telling real reasoning from an echo of the answer in Hermes' ``reasoning.available``.

hermes-agent sends, under that name, the first 500 characters of each assistant message once
the message is complete: text the deltas already carried, sometimes with the model's
``<think>`` block in front. Forwarded as reasoning, it repeats the answer (and
only until a refresh). What repeats the answer is dropped, a ``<think>`` block in front of it
is kept as reasoning, and anything else is reasoning as it came.
"""

from __future__ import annotations

import re

THINK = re.compile(r"<think>(.*?)(?:</think>|$)", re.S)


def _plain(text: str) -> str:
    return " ".join(text.split())


class AnswerEcho:
    """The current answer segment's text as the deltas carried it, to judge what comes
    under ``reasoning.available``."""

    __slots__ = ("_parts", "held")

    def __init__(self) -> None:
        self._parts: list[str] = []
        self.held: str | None = None  # came before any answer text: judged when the run ends

    def text(self, delta: str) -> None:
        self._parts.append(delta)

    def new_segment(self) -> str | None:
        """A tool call starts a new answer segment; a held text was the last one's reasoning."""
        self._parts.clear()
        held, self.held = self.held, None
        return held

    def judge(self, text: str) -> str | None:
        """The reasoning to forward for ``text`` now (None: nothing, or it is held)."""
        answer = _plain("".join(self._parts))
        if not answer:
            self.held = text if self.held is None else f"{self.held}\n\n{text}"
            return None
        return _reasoning(text, answer)

    def settle(self, output: str | None) -> str | None:
        """At the end of the run: a held text, judged against the final output."""
        held, self.held = self.held, None
        if held is None:
            return None
        answer = _plain(output or "".join(self._parts))
        return _reasoning(held, answer) if answer else held


def _reasoning(text: str, answer: str) -> str | None:
    thought = "\n\n".join(part.strip() for part in THINK.findall(text) if part.strip())
    rest = _plain(THINK.sub("", text))
    if not rest or rest in answer or rest.startswith(answer):
        return thought or None  # an echo of the answer (with its reasoning in front, if any)
    return text
