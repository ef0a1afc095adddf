"""Events are encoded and upstream frames decoded by a fast JSON library, with the standard
one taking what it refuses."""

from __future__ import annotations

import json

from server.transport.emitter import encode as _encode
from server.upstream.base import TextDelta
from server.upstream.hermes import parse_event


def test_encoding_is_compact_utf8_and_takes_lone_surrogates() -> None:
    assert _encode({"delta": "héllo ✓", "n": [1, 2.5, None]}) == (
        '{"delta":"héllo ✓","n":[1,2.5,null]}'
    )
    odd = _encode({"delta": "a\ud800b"})
    assert json.loads(odd) == {"delta": "a\ud800b"}


def test_upstream_frames_with_odd_text_still_parse() -> None:
    frame = '{"event": "message.delta", "delta": "x\\ud800y"}'
    assert parse_event(frame) == TextDelta("x\ud800y", None)
    assert parse_event('{"event": "message.delta", "delta": "ok", "timestamp": 1e400}') == (
        TextDelta("ok", None)
    )
    huge = '{"event": "message.delta", "delta": "ok", "timestamp": 1' + "0" * 400 + "}"
    assert parse_event(huge) == TextDelta("ok", None)
