"""Upstream configs as the admin API takes and shows them: validation, masking, conversion."""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

from db.records import UpstreamConfigRecord
from server.errors import BadRequest
from server.settings import UPSTREAM_KINDS, Settings
from server.upstream.base import SAMPLING_FIELDS, Sampling, UpstreamConfig

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_URL = 2048
MAX_KEY = 4096
MAX_MODEL = 200
MAX_STOPS = 16
MAX_STOP_CHARS = 64
URL_SCHEMES = {
    "hermes": ("http", "https"),
    "openai": ("http", "https"),
    "lmstudio": ("http", "ws"),
}
EDITABLE = (
    "kind",
    "url",
    "api_key",
    "model",
    "context_length",
    "sampling",
    "overrides",
    "draft_model",
    "active",
)
# a change to one of these makes the last check stale
CHECKED = ("kind", "url", "api_key", "model", "draft_model")
# sampling field -> (type, lowest, highest)
SAMPLING_RANGES: dict[str, tuple[type, float, float]] = {
    "temperature": (float, 0.0, 5.0),
    "top_p": (float, 0.0, 1.0),
    "top_k": (int, 0, 100_000),
    "min_p": (float, 0.0, 1.0),
    "repeat_penalty": (float, 0.0, 5.0),
    "max_tokens": (int, 1, 10_000_000),
}
OVERRIDE_KEYS = ("family", "stop", "system_role", "markers")


def config_from_record(record: UpstreamConfigRecord) -> UpstreamConfig:
    return UpstreamConfig(
        name=record.name,
        kind=record.kind,
        url=record.url,
        api_key=record.api_key,
        model=record.model,
        context_length=record.context_length,
        sampling=Sampling(**record.sampling),
        overrides=dict(record.overrides),
        draft_model=record.draft_model,
    )


def env_digest(settings: Settings) -> str:
    """A digest of the ``CHATRUN_UPSTREAM_*`` settings the default config is taken from."""
    values = [
        settings.upstream_kind,
        settings.upstream_url,
        settings.upstream_api_key,
        settings.upstream_model,
    ]
    return hashlib.sha256(json.dumps(values).encode()).hexdigest()


def default_record(settings: Settings, name: str) -> UpstreamConfigRecord:
    """The config the environment settings describe."""
    now = time.time()
    return UpstreamConfigRecord(
        name=name,
        kind=settings.upstream_kind,
        url=settings.upstream_url,
        api_key=settings.upstream_api_key,
        model=settings.upstream_model,
        context_length=None,
        sampling={},
        overrides={},
        draft_model="",
        active=True,
        last_check=None,
        created_at=now,
        updated_at=now,
        env_digest=env_digest(settings),
    )


def masked_key(key: str) -> str:
    """What may be shown of an API key: its last four characters at most."""
    if not key:
        return ""
    return "****" + key[-4:] if len(key) >= 12 else "****"


def public(record: UpstreamConfigRecord) -> dict[str, Any]:
    """A config as the admin API shows it: the key only masked."""
    return {
        "name": record.name,
        "kind": record.kind,
        "url": record.url,
        "api_key": masked_key(record.api_key),
        "has_api_key": bool(record.api_key),
        "model": record.model,
        "context_length": record.context_length,
        "sampling": record.sampling,
        "overrides": record.overrides,
        "draft_model": record.draft_model,
        "active": record.active,
        "last_check": record.last_check,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
    }


def new_record(payload: object, kinds: tuple[str, ...]) -> UpstreamConfigRecord:
    """Validate a create request."""
    body = _object(payload, "the request body")
    unknown = sorted(set(body) - {"name", *EDITABLE})
    if unknown:
        raise BadRequest(f"unknown fields: {', '.join(unknown)}")
    for required in ("name", "kind", "url"):
        if required not in body:
            raise BadRequest(f"{required!r} is required")
    name = body["name"]
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise BadRequest(
            "'name' must be 1-64 characters: letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    now = time.time()
    base = UpstreamConfigRecord(
        name=name,
        kind="",
        url="",
        api_key="",
        model="",
        context_length=None,
        sampling={},
        overrides={},
        draft_model="",
        active=False,
        last_check=None,
        created_at=now,
        updated_at=now,
    )
    return apply_changes(base, body, kinds, creating=True)


def apply_changes(
    record: UpstreamConfigRecord,
    payload: object,
    kinds: tuple[str, ...],
    *,
    creating: bool = False,
) -> UpstreamConfigRecord:
    """Validate an update (only the given fields change; ``api_key: ""`` clears the key)."""
    body = _object(payload, "the request body")
    allowed = {"name", *EDITABLE} if creating else set(EDITABLE)
    unknown = sorted(set(body) - allowed)
    if unknown:
        hint = " (a config cannot be renamed)" if "name" in unknown else ""
        raise BadRequest(f"unknown fields: {', '.join(unknown)}{hint}")
    changes: dict[str, Any] = {}
    if "kind" in body:
        kind = body["kind"]
        if kind not in kinds:
            raise BadRequest(
                f"'kind' must be one of {', '.join(kinds)}"
                + (f" (not {kind!r})" if isinstance(kind, str) else "")
            )
        changes["kind"] = kind
    kind = changes.get("kind", record.kind)
    if "url" in body or "kind" in body:
        changes["url"] = _url(body.get("url", record.url), kind)
    if "api_key" in body:
        key = body["api_key"]
        if not isinstance(key, str) or len(key) > MAX_KEY or _has_control(key):
            raise BadRequest(
                f"'api_key' must be a string of at most {MAX_KEY} printable characters"
            )
        changes["api_key"] = key.strip()
    for field in ("model", "draft_model"):
        if field in body:
            value = body[field]
            if not isinstance(value, str) or len(value) > MAX_MODEL or _has_control(value):
                raise BadRequest(f"{field!r} must be a string of at most {MAX_MODEL} characters")
            changes[field] = value.strip()
    if "context_length" in body:
        value = body["context_length"]
        if value is not None and (not _is_int(value) or not 256 <= value <= 100_000_000):
            raise BadRequest("'context_length' must be null or a whole number from 256")
        changes["context_length"] = value
    if "sampling" in body:
        changes["sampling"] = _sampling(body["sampling"])
    if "overrides" in body:
        changes["overrides"] = _overrides(body["overrides"])
    if "active" in body:
        if not isinstance(body["active"], bool):
            raise BadRequest("'active' must be true or false")
        changes["active"] = body["active"]
    changes["updated_at"] = time.time()
    if any(changes.get(k, getattr(record, k)) != getattr(record, k) for k in CHECKED):
        changes["last_check"] = None  # the check was of something else
    return replace(record, **changes)


def supported_kinds(available: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(k for k in UPSTREAM_KINDS if k in available)


def _object(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadRequest(f"{what} must be a JSON object")
    return value


def _url(value: object, kind: str) -> str:
    schemes = URL_SCHEMES.get(kind, ("http", "https"))
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_URL:
        raise BadRequest(f"'url' must be a URL of at most {MAX_URL} characters")
    url = value.strip()
    if _has_control(url) or " " in url:
        raise BadRequest("'url' must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise BadRequest(f"'url' is not a valid URL ({exc})") from None
    if parts.scheme not in schemes or not parts.hostname:
        raise BadRequest(
            f"'url' must be an absolute {' or '.join(schemes)} URL for kind {kind!r}, "
            "like http://127.0.0.1:8000"
        )
    if parts.username or parts.password:
        raise BadRequest("'url' must not contain credentials; put the key in 'api_key'")
    if port == 0:
        raise BadRequest("'url' has an invalid port")
    if parts.query or parts.fragment:
        raise BadRequest("'url' must not have a query or a fragment")
    return url


def _sampling(value: object) -> dict[str, Any]:
    body = _object(value, "'sampling'")
    unknown = sorted(set(body) - set(SAMPLING_FIELDS))
    if unknown:
        raise BadRequest(
            f"unknown sampling fields: {', '.join(unknown)} (known: {', '.join(SAMPLING_FIELDS)})"
        )
    out: dict[str, Any] = {}
    for name, item in body.items():
        if item is None:
            continue
        kind, low, high = SAMPLING_RANGES[name]
        number_ok = _is_int(item) if kind is int else _is_number(item)
        if not number_ok or not low <= item <= high:
            what = "a whole number" if kind is int else "a number"
            raise BadRequest(f"sampling {name!r} must be {what} from {low:g} to {high:g}")
        out[name] = kind(item)
    return out


def _overrides(value: object) -> dict[str, Any]:
    body = _object(value, "'overrides'")
    unknown = sorted(set(body) - set(OVERRIDE_KEYS))
    if unknown:
        raise BadRequest(
            f"unknown overrides: {', '.join(unknown)} (known: {', '.join(OVERRIDE_KEYS)})"
        )
    out: dict[str, Any] = {}
    if "family" in body:
        family = body["family"]
        if not isinstance(family, str) or not re.fullmatch(r"[a-z0-9.-]{1,32}", family):
            raise BadRequest("override 'family' must be a short lower-case name like 'qwen'")
        out["family"] = family
    if "system_role" in body:
        if not isinstance(body["system_role"], bool):
            raise BadRequest("override 'system_role' must be true or false")
        out["system_role"] = body["system_role"]
    for key in ("stop", "markers"):
        if key in body:
            items = body[key]
            if (
                not isinstance(items, list)
                or len(items) > MAX_STOPS
                or not all(
                    isinstance(s, str) and 0 < len(s) <= MAX_STOP_CHARS and "\0" not in s
                    for s in items
                )
            ):
                raise BadRequest(
                    f"override {key!r} must be a list of at most {MAX_STOPS} non-empty strings "
                    f"of at most {MAX_STOP_CHARS} characters"
                )
            out[key] = list(items)
    return out


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def _has_control(value: str) -> bool:
    return any(ord(c) < 32 or ord(c) == 127 for c in value)
