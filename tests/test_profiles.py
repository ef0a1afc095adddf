"""Model profiles: family detection, overrides, chat messages, and the stream clean-up (whatever
the split points, the streamed text is the clean-up of the whole)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.upstream.base import (
    ReasoningDelta,
    Sampling,
    TextDelta,
    UpstreamConfig,
    UpstreamRequest,
)
from server.upstream.profiles import (
    StreamCleaner,
    build_messages,
    clean_text,
    detect_family,
    profile_for,
)


def config(model: str = "", **kwargs: object) -> UpstreamConfig:
    return UpstreamConfig(name="p", kind="openai", url="http://h/v1", model=model, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("model", "family"),
    [
        ("meta-llama/Llama-3.1-8B-Instruct", "llama"),
        ("Qwen/Qwen2.5-7B-Instruct", "qwen"),
        ("qwq-32b", "qwq"),
        ("google/gemma-2-9b-it", "gemma"),
        ("mistralai/Mistral-7B-Instruct-v0.3", "mistral"),
        ("mixtral-8x7b", "mistral"),
        ("microsoft/Phi-3-mini-4k-instruct", "phi"),
        ("deepseek-ai/DeepSeek-V3", "deepseek"),
        ("deepseek-r1-distill-qwen-7b", "deepseek-r1"),
        ("openai/gpt-oss-20b", "gpt-oss"),
        ("gpt-4o-mini", "generic"),
    ],
)
def test_family_detection(model: str, family: str) -> None:
    assert detect_family(model) == family


def test_overrides_and_sampling_win_over_the_family() -> None:
    qwen = profile_for(config("qwen2.5-7b"))
    assert "<|im_end|>" in qwen.stop and qwen.sampling.temperature == 0.7
    tuned = profile_for(
        config(
            "qwen2.5-7b",
            sampling=Sampling(temperature=0.1, top_k=20),
            overrides={"stop": ["###"], "system_role": False, "family": "gemma"},
        )
    )
    assert tuned.family == "gemma" and tuned.stop == ("###",) and not tuned.system_role
    assert tuned.sampling == Sampling(temperature=0.1, top_p=0.95, top_k=20)


def test_messages_carry_system_prompt_summary_history_and_fold_without_a_system_role() -> None:
    request = UpstreamRequest(
        session_id="s",
        input=[{"type": "text", "text": "and now?"}],
        history=[("user", "hi"), ("assistant", "hello")],
        instructions="Be brief.",
        model=None,
        context_summary="Background: earlier talk.",
    )
    messages = build_messages(request, profile_for(config("qwen2.5")))
    assert messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "system", "content": "Background: earlier talk."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "and now?"},
    ]
    folded = build_messages(request, profile_for(config("gemma-2-9b")))
    assert [m["role"] for m in folded] == ["user", "assistant", "user"]
    assert folded[0]["content"].startswith("Be brief.\n\nBackground: earlier talk.")
    assert folded[0]["content"].endswith("hi")


@pytest.mark.parametrize(
    ("model", "raw", "text", "reasoning", "runaway"),
    [
        ("qwen2.5", "Hello<|im_end|>", "Hello", "", False),
        (
            "qwen2.5",
            "<|im_start|>assistant\nHi<|im_end|>\n<|im_start|>user\nmore",
            "Hi\n",
            "",
            True,
        ),
        (
            "llama-3",
            "<|start_header_id|>assistant<|end_header_id|>\n\nHi!<|eot_id|>",
            "Hi!",
            "",
            False,
        ),
        ("mistral-7b", "Sure.</s> [INST] next question [/INST]", "Sure. ", "", True),
        ("gpt-4o", "assistant: Paris", "Paris", "", False),
        ("gpt-4o", "Paris.\nUser: and Rome?\nAssistant: Rome.", "Paris.", "", True),
        ("qwen3", "<think>plan</think>The answer", "The answer", "plan", False),
        ("deepseek-r1", "hmm, let me see</think>\n\n42", "42", "hmm, let me see", False),
        ("deepseek-r1", "no thinking here", "no thinking here", "", False),
        ("gemma-2", "Hi<end_of_turn>\n<start_of_turn>user\nmore", "Hi\n", "", True),
        (
            "gpt-oss-20b",
            "<|channel|>analysis<|message|>think<|end|><|start|>assistant<|channel|>final"
            "<|message|>Done<|return|>",
            "Done",
            "think",
            False,
        ),
        ("gpt-4o", "a < b, [1] and\nuser names", "a < b, [1] and\nuser names", "", False),
    ],
)
def test_clean_up(model: str, raw: str, text: str, reasoning: str, runaway: bool) -> None:
    profile = profile_for(config(model))
    assert clean_text(profile, raw) == (text, reasoning)
    cleaner = StreamCleaner(profile)
    for char in raw:
        cleaner.feed(char)
    cleaner.finish()
    assert cleaner.runaway is runaway


PIECES = [
    "Hello",
    " world",
    "<|im_end|>",
    "<|im_start|>assistant\n",
    "<|im_start|>user\n",
    "<think>",
    "</think>",
    "[INST]",
    "</s>",
    "\nuser: ",
    "assistant:",
    "<",
    "[",
    "\n",
    "<|",
    "a<b",
    "<|eot_id|>",
    "<end_of_turn>",
    "é✓",
]


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["qwen2.5", "llama-3", "mistral-7b", "gemma-2", "deepseek-r1", "gpt-4o"]),
    st.lists(st.sampled_from(PIECES), max_size=14),
    st.lists(st.integers(min_value=1, max_value=7), min_size=1, max_size=30),
)
def test_streamed_text_equals_the_clean_up_of_the_whole(
    model: str, pieces: list[str], cuts: list[int]
) -> None:
    profile = profile_for(config(model))
    raw = "".join(pieces)
    whole = clean_text(profile, raw)
    cleaner = StreamCleaner(profile)
    events: list[TextDelta | ReasoningDelta] = []
    position, i = 0, 0
    while position < len(raw):
        size = cuts[i % len(cuts)]
        events += cleaner.feed(raw[position : position + size])
        position += size
        i += 1
    events += cleaner.finish()
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    reasoning = "".join(e.text for e in events if isinstance(e, ReasoningDelta))
    assert (text, reasoning) == whole
    for marker in ("<|im_end|>", "<|eot_id|>", "</s>", "<end_of_turn>"):
        assert marker not in text


def test_only_one_leading_role_is_cut_whatever_the_split() -> None:
    # found by the property above: a second "assistant:" is the answer's own text
    raw = "assistant:\nassistant:"
    profile = profile_for(config("qwen2.5"))
    assert clean_text(profile, raw) == ("assistant:", "")
    cleaner = StreamCleaner(profile)
    events = [e for c in raw for e in cleaner.feed(c)] + cleaner.finish()
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "assistant:"
