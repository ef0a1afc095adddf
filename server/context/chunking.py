"""One input larger than the context window: read it in parts, keep what is relevant.

The message is cut into parts that fit; the upstream is asked, for each part (a few at a time),
to copy out what is relevant to the user's question (the message's last paragraph). The answer
run then gets the extracts and the question instead of the whole text, or an honest note that
nothing was relevant. When even that does not fit, the run fails with ``input_too_large``.
"""

from __future__ import annotations

import asyncio

from server.context.compression import PROMPT_SLACK, CompressionAborted, Compressor
from server.errors import InputTooLarge
from server.protocol import Event
from server.runs.state import ActiveRun
from server.sessions.state import SessionState
from server.upstream.base import Upstream

EXTRACT_INSTRUCTIONS = (
    "You read one part of a long message for a question about it. Copy out, word for word, "
    "the passages of this part that are relevant to the question. If nothing in this part is "
    "relevant, answer exactly NONE."
)
NOTHING = "NONE"
QUESTION_TOKENS = 256
MIN_PART_TOKENS = 32


def question_of(text: str) -> str:
    """The user's question: the last paragraph of the message."""
    paragraphs = [p.strip() for p in text.replace("\r\n", "\n").split("\n\n") if p.strip()]
    return paragraphs[-1] if paragraphs else ""


def _relevant(answer: str) -> bool:
    cleaned = answer.strip().strip(".").strip()
    return bool(cleaned) and cleaned.upper() != NOTHING


async def read_in_parts(
    compressor: Compressor,
    state: SessionState,
    upstream: Upstream,
    active: ActiveRun,
    text: str,
    *,
    room: int,
    model: str | None,
) -> str:
    """The input to send instead of ``text``, within ``room`` tokens."""
    tokens = compressor.tokens
    question = tokens.truncate(question_of(text), QUESTION_TOKENS)
    overhead = tokens.count(EXTRACT_INSTRUCTIONS) + tokens.count(question) + PROMPT_SLACK
    part_tokens = room - overhead
    if part_tokens < MIN_PART_TOKENS:
        raise InputTooLarge(
            "The message is too large for the upstream's context window, even read in parts."
        )
    parts = tokens.split(text, part_tokens)
    total = len(parts)
    done = 0
    hub = compressor.hub
    hub.publish(state, Event.CONTEXT_CHUNKING, {"run_id": active.id, "done": 0, "total": total})
    gate = asyncio.Semaphore(compressor.settings.chunk_concurrency)

    async def extract(part: str) -> str:
        nonlocal done
        async with gate:
            if active.aborting:
                raise CompressionAborted
            prompt = f"Question: {question}\n\nPart of the message:\n{part}"
            answer = await compressor.ask(
                upstream, state.id, prompt, model, None, instructions=EXTRACT_INSTRUCTIONS
            )
        done += 1
        hub.publish(
            state, Event.CONTEXT_CHUNKING, {"run_id": active.id, "done": done, "total": total}
        )
        return answer

    answers = await asyncio.gather(*(extract(p) for p in parts), return_exceptions=True)
    for answer in answers:
        if isinstance(answer, BaseException):
            raise answer
    if active.aborting:
        raise CompressionAborted
    relevant = [a.strip() for a in answers if isinstance(a, str) and _relevant(a)]
    size = tokens.count(text)
    if relevant:
        combined = (
            f"[The message was too long to send whole ({size} tokens). These are the passages "
            f"of it relevant to the question, taken from {total} parts.]\n\n"
            + "\n\n---\n\n".join(relevant)
            + f"\n\nQuestion: {question}"
        )
    else:
        combined = (
            f"[The message was too long to send whole ({size} tokens). It was read in {total} "
            "parts and none of them held anything relevant to the question below; say so "
            f"plainly.]\n\nQuestion: {question}"
        )
    if tokens.count(combined) > room:
        raise InputTooLarge(
            f"The message is too large for the upstream's context window: even the passages "
            f"relevant to the question ({len(relevant)} of {total} parts) do not fit."
        )
    return combined
