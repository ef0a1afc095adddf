"""Model profiles: what a model family needs (stop sequences, sampling defaults, system role,
leaked template markers), and the clean-up of its output **on the stream**.

The family comes from the model id; an upstream config's ``overrides`` (``family``, ``stop``,
``system_role``, ``markers``) and ``sampling`` win over the family's defaults.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

from server.payloads import input_text
from server.upstream.base import (
    ReasoningDelta,
    Sampling,
    TextDelta,
    UpstreamConfig,
    UpstreamRequest,
)

# DeepSeek's markers use the full-width bar U+FF5C and the block U+2581
DEEPSEEK_END = "<\uff5cend\u2581of\u2581sentence\uff5c>"
DEEPSEEK_BEGIN = "<\uff5cbegin\u2581of\u2581sentence\uff5c>"
COMMON_MARKERS = (
    "<|im_end|>",
    "<|eot_id|>",
    "<|end_of_text|>",
    "<|endoftext|>",
    "</s>",
    "<s>",
    "[/INST]",
    "<end_of_turn>",
    "<|end|>",
    "<|return|>",
    "<|eom_id|>",
    DEEPSEEK_END,
    DEEPSEEK_BEGIN,
    "<|assistant|>",
)


@dataclass(frozen=True, slots=True)
class ModelProfile:
    family: str
    stop: tuple[str, ...]
    sampling: Sampling
    system_role: bool
    markers: tuple[str, ...]
    implicit_think: bool = False  # output may begin inside a ``<think>`` that was never opened


FAMILIES: dict[str, ModelProfile] = {
    "generic": ModelProfile("generic", (), Sampling(), True, ()),
    "llama": ModelProfile(
        "llama", ("<|eot_id|>", "<|eom_id|>"), Sampling(temperature=0.6, top_p=0.9), True, ()
    ),
    "qwen": ModelProfile(
        "qwen", ("<|im_end|>", "<|endoftext|>"), Sampling(temperature=0.7, top_p=0.8), True, ()
    ),
    "qwq": ModelProfile(
        "qwq",
        ("<|im_end|>", "<|endoftext|>"),
        Sampling(temperature=0.6, top_p=0.95),
        True,
        (),
        implicit_think=True,
    ),
    "gemma": ModelProfile(
        "gemma", ("<end_of_turn>",), Sampling(temperature=1.0, top_p=0.95, top_k=64), False, ()
    ),
    "mistral": ModelProfile("mistral", ("</s>",), Sampling(temperature=0.7), True, ("[INST]",)),
    "phi": ModelProfile("phi", ("<|end|>", "<|endoftext|>"), Sampling(temperature=0.7), True, ()),
    "deepseek": ModelProfile(
        "deepseek", (DEEPSEEK_END,), Sampling(temperature=0.6, top_p=0.95), True, ()
    ),
    "deepseek-r1": ModelProfile(
        "deepseek-r1",
        (DEEPSEEK_END,),
        Sampling(temperature=0.6, top_p=0.95),
        True,
        (),
        implicit_think=True,
    ),
    "gpt-oss": ModelProfile("gpt-oss", ("<|return|>",), Sampling(temperature=1.0), True, ()),
}
# (pattern on the lower-cased model id, family), first match wins
DETECT = (
    (re.compile(r"gpt-oss"), "gpt-oss"),
    (re.compile(r"deepseek.*(r1|reason)|r1-distill"), "deepseek-r1"),
    (re.compile(r"deepseek"), "deepseek"),
    (re.compile(r"qwq"), "qwq"),
    (re.compile(r"qwen"), "qwen"),
    (re.compile(r"gemma"), "gemma"),
    (re.compile(r"mistral|mixtral|ministral|codestral|devstral"), "mistral"),
    (re.compile(r"\bphi|phi-?\d"), "phi"),
    (re.compile(r"llama"), "llama"),
)


def detect_family(model_id: str) -> str:
    lowered = model_id.lower()
    return next((family for pattern, family in DETECT if pattern.search(lowered)), "generic")


def profile_for(config: UpstreamConfig, model_id: str | None = None) -> ModelProfile:
    """The profile of the config's model, with the config's overrides and sampling applied."""
    overrides: dict[str, Any] = config.overrides
    family = overrides.get("family") or detect_family(model_id or config.model)
    base = FAMILIES.get(family) or replace(FAMILIES["generic"], family=family)
    return replace(
        base,
        stop=tuple(overrides["stop"]) if "stop" in overrides else base.stop,
        system_role=overrides.get("system_role", base.system_role),
        markers=tuple(overrides["markers"]) if "markers" in overrides else base.markers,
        sampling=config.sampling.over(base.sampling),
    )


def build_messages(request: UpstreamRequest, profile: ModelProfile) -> list[dict[str, str]]:
    """Chat messages for a request: system prompt and background, history, the input."""
    system = [part for part in (request.instructions, request.context_summary) if part]
    messages: list[dict[str, str]] = []
    if profile.system_role:
        messages.extend({"role": "system", "content": part} for part in system)
    messages.extend({"role": role, "content": content} for role, content in request.history)
    text = request.input if isinstance(request.input, str) else input_text(request.input)
    messages.append({"role": "user", "content": text})
    if system and not profile.system_role:
        first = next(m for m in messages if m["role"] == "user")
        preface = "\n\n".join(system)
        first["content"] = f"{preface}\n\n---\n\n{first['content']}"
    return messages


# -- clean-up on the stream ----------------------------------------------------------------

# a marker that opens a turn, with what follows up to the role's end
TURN_OPENERS = {
    "<|im_start|>": "\n",
    "<|start_header_id|>": "<|end_header_id|>",
    "<start_of_turn>": "\n",
    "<|start|>": "<|",  # gpt-oss: <|start|>assistant<|channel|>…
}
CHANNEL = "<|channel|>"
CHANNEL_END = "<|message|>"
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
RUNAWAY_LINES = ("\nuser:", "\nUser:", "\nUSER:", "\nHuman:", "\n### User:", "\n### Instruction:")
USER_ROLES = ("user", "human", "system")
ROLE_LOOKAHEAD = 40  # the longest role text read after a turn marker
LEADING_ROLE = re.compile(r"\s*(assistant|Assistant|ASSISTANT)\s*:[ \t]*")
TRIGGER_STARTS = "<[\n"
IMPLICIT_THINK_LIMIT = 4000  # characters held while undecided whether output began thinking


class StreamCleaner:
    """Cleans one run's output as it streams.

    ``feed`` returns what can be emitted now; a tail that could still become a marker is held
    back (and only that), ``finish`` flushes it. Whatever the split points, the emitted text is
    the clean-up of the whole output.
    """

    def __init__(self, profile: ModelProfile) -> None:
        self.profile = profile
        markers = {*COMMON_MARKERS, *profile.markers, *profile.stop}
        markers.discard("")
        self._markers = tuple(sorted(markers, key=len, reverse=True))
        self._triggers = (
            *self._markers,
            *TURN_OPENERS,
            CHANNEL,
            THINK_OPEN,
            THINK_CLOSE,
            "[INST]",
            *RUNAWAY_LINES,
        )
        self._longest = max(len(t) for t in self._triggers)
        self._buffer = ""
        self._thinking = False
        self._undecided = profile.implicit_think  # may have begun inside an unopened <think>
        self._started = False  # text (not reasoning) was emitted
        self._leading = True  # still at the very start of the answer
        self._role_checked = False  # a leading "assistant:" was looked for (and cut) once
        self.runaway = False
        self._out: list[TextDelta | ReasoningDelta] = []

    def feed(self, text: str) -> list[TextDelta | ReasoningDelta]:
        if self.runaway or not text:
            return []
        self._buffer += text
        self._process(final=False)
        return self._take()

    def finish(self) -> list[TextDelta | ReasoningDelta]:
        if not self.runaway:
            self._process(final=True)
        return self._take()

    def _take(self) -> list[TextDelta | ReasoningDelta]:
        out, self._out = self._out, []
        return out

    def _emit(self, text: str, *, reasoning: bool | None = None) -> None:
        if not text:
            return
        reasoning = self._thinking if reasoning is None else reasoning
        if not reasoning and self._leading:
            if not text.strip():
                return  # leading whitespace of the answer
            text = text.lstrip("\n")
            self._leading = False
        kind = ReasoningDelta if reasoning else TextDelta
        if self._out and isinstance(self._out[-1], kind):
            self._out[-1] = kind(self._out[-1].text + text)
        else:
            self._out.append(kind(text))
        if not reasoning:
            self._started = True

    def _process(self, *, final: bool) -> None:
        while self._buffer and not self.runaway:
            if self._undecided and not self._decide(final):
                return
            if self._leading and not self._thinking and not self._strip_leading_role(final):
                return
            index, trigger = self._next_trigger()
            if trigger is None:
                keep = 0 if final else self._partial_tail()
                self._emit(self._buffer[: len(self._buffer) - keep])
                self._buffer = self._buffer[len(self._buffer) - keep :]
                return
            self._emit(self._buffer[:index])
            self._buffer = self._buffer[index:]
            if not self._handle(trigger, final):
                return  # needs more text

    def _decide(self, final: bool) -> bool:
        """For models that may start thinking without ``<think>``: hold until it is clear."""
        close = self._buffer.find(THINK_CLOSE)
        opened = self._buffer.find(THINK_OPEN)
        if close >= 0 and (opened < 0 or close < opened):
            self._emit(self._buffer[:close], reasoning=True)
            self._buffer = self._buffer[close + len(THINK_CLOSE) :]
            self._undecided = False
            return True
        if opened >= 0 or final or len(self._buffer) > IMPLICIT_THINK_LIMIT:
            self._undecided = False
            return True
        return False

    def _strip_leading_role(self, final: bool) -> bool:
        """Cut one "assistant:" the answer starts with; False while that is not clear yet."""
        stripped = self._buffer.lstrip()
        if not stripped:
            if final:
                self._buffer = ""
            return final
        if self._role_checked:
            return True
        match = LEADING_ROLE.match(self._buffer)
        if match is not None:
            if match.end() == len(self._buffer) and not final:
                return False  # spaces may follow
            self._buffer = self._buffer[match.end() :]
            self._role_checked = True
            return True
        # not yet, while it could still become "assistant:"
        self._role_checked = (
            final or ":" in stripped or not "assistant".startswith(stripped.lower())
        )
        return self._role_checked

    def _next_trigger(self) -> tuple[int, str | None]:
        buffer = self._buffer
        if not any(c in buffer for c in TRIGGER_STARTS):
            return len(buffer), None
        best, found = len(buffer), None
        for trigger in self._triggers:
            index = buffer.find(trigger, 0, best + len(trigger))
            if index >= 0 and (index < best or (index == best and len(trigger) > len(found or ""))):
                best, found = index, trigger
        return best, found

    def _partial_tail(self) -> int:
        """Length of the longest buffer tail that is the start of some trigger."""
        tail = self._buffer[-self._longest :]
        for start, char in enumerate(tail):
            if char in TRIGGER_STARTS:
                suffix = tail[start:]
                if any(t.startswith(suffix) for t in self._triggers):
                    return len(suffix)
        return 0

    def _cut(self) -> None:
        self.runaway = True
        self._buffer = ""

    def _handle(self, trigger: str, final: bool) -> bool:
        """Deal with ``trigger`` at the start of the buffer; False when more text is needed."""
        buffer = self._buffer
        if trigger in RUNAWAY_LINES:
            if self._started:
                self._cut()
            else:
                self._emit("\n")
                self._buffer = buffer[1:]
            return True
        if trigger == "[INST]":
            if self._started:
                self._cut()
            else:
                self._buffer = buffer[len(trigger) :]
            return True
        if trigger == THINK_OPEN:
            self._thinking = True
            self._buffer = buffer[len(trigger) :]
            return True
        if trigger == THINK_CLOSE:
            self._thinking = False
            self._buffer = buffer[len(trigger) :]
            return True
        if trigger == CHANNEL:
            end = buffer.find(CHANNEL_END, len(trigger))
            if end < 0:
                if final or len(buffer) > len(trigger) + ROLE_LOOKAHEAD:
                    self._buffer = buffer[len(trigger) :]
                    return True
                return False
            channel = buffer[len(trigger) : end].strip().lower()
            self._thinking = channel.startswith(("analysis", "commentary"))
            self._buffer = buffer[end + len(CHANNEL_END) :]
            return True
        if trigger in TURN_OPENERS:
            closer = TURN_OPENERS[trigger]
            end = buffer.find(closer, len(trigger))
            if end < 0:
                if final or len(buffer) > len(trigger) + ROLE_LOOKAHEAD:
                    role, rest = buffer[len(trigger) :], ""
                else:
                    return False
            else:
                role = buffer[len(trigger) : end]
                keep_closer = closer == "<|"  # gpt-oss: the closer starts the next marker
                rest = buffer[end if keep_closer else end + len(closer) :]
            if role.strip().lower() in USER_ROLES and self._started:
                self._cut()
                return True
            if trigger == "<|start_header_id|>":
                rest = rest.lstrip("\n")
            self._thinking = False if trigger == "<|start|>" else self._thinking
            self._buffer = rest
            return True
        # a plain marker: dropped ("<|end|>" also ends a gpt-oss channel)
        if trigger == "<|end|>":
            self._thinking = False
        self._buffer = buffer[len(trigger) :]
        return True


def clean_text(profile: ModelProfile, text: str) -> tuple[str, str]:
    """The clean-up of a whole output: ``(text, reasoning)``."""
    cleaner = StreamCleaner(profile)
    events = [*cleaner.feed(text), *cleaner.finish()]
    return (
        "".join(e.text for e in events if isinstance(e, TextDelta)),
        "".join(e.text for e in events if isinstance(e, ReasoningDelta)),
    )
