"""Plain text of a message for a session's title and preview: Markdown marks taken out
(emphasis, code fences and spans, headings, quotes, list markers, links and images), white
space collapsed. Titles stay renamable; this only shapes the one derived from the first
message."""

from __future__ import annotations

import re

TITLE_CHARS = 100
PREVIEW_CHARS = 160

_FENCE = re.compile(r"^\s{0,3}(`{3,}|~{3,}).*$", re.MULTILINE)
_IMAGE = re.compile(r"!\[([^\]]*)\]\([^)]*\)")
_LINK = re.compile(r"\[([^\]]+)\]\([^)]*\)")
_REF_LINK = re.compile(r"\[([^\]]+)\]\[[^\]]*\]")
_AUTOLINK = re.compile(r"<((?:https?|mailto):[^>\s]+)>")
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$", re.MULTILINE)
_QUOTE = re.compile(r"^\s{0,3}(?:>\s?)+", re.MULTILINE)
_BULLET = re.compile(r"^\s*(?:[-*+]|\d{1,9}[.)])\s+", re.MULTILINE)
_RULE = re.compile(r"^\s{0,3}(?:[-*_]\s*){3,}$", re.MULTILINE)
_CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.DOTALL)
_STRONG = re.compile(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1", re.DOTALL)
_STRIKE = re.compile(r"~~(?=\S)(.+?)(?<=\S)~~", re.DOTALL)
_EM_STAR = re.compile(r"(?<![\w*])\*(?=\S)(.+?)(?<=\S)\*(?![\w*])", re.DOTALL)
_EM_UNDERSCORE = re.compile(r"(?<![\w_])_(?=\S)(.+?)(?<=\S)_(?![\w_])", re.DOTALL)
_SPACE = re.compile(r"\s+")


def plain_text(markdown: str) -> str:
    """``markdown`` as one line of plain text."""
    text = _FENCE.sub("", markdown)
    text = _RULE.sub("", text)
    text = _HEADING.sub(r"\1", text)
    text = _QUOTE.sub("", text)
    text = _BULLET.sub("", text)
    text = _IMAGE.sub(r"\1", text)
    text = _LINK.sub(r"\1", text)
    text = _REF_LINK.sub(r"\1", text)
    text = _AUTOLINK.sub(r"\1", text)
    text = _CODE_SPAN.sub(lambda m: m.group(2).strip(), text)
    for _ in range(2):  # nested marks: ***both***, **_both_**
        text = _STRONG.sub(r"\2", text)
        text = _STRIKE.sub(r"\1", text)
        text = _EM_STAR.sub(r"\1", text)
        text = _EM_UNDERSCORE.sub(r"\1", text)
    return _SPACE.sub(" ", text).strip()


def title_of(text: str) -> str:
    """A new session's title: the plain text of its first message, cut to 100 characters
    (the raw text when nothing is left of it)."""
    plain = plain_text(text) or _SPACE.sub(" ", text).strip()
    return plain[:TITLE_CHARS]


def preview_of(text: str) -> str:
    """A session's preview in the list: the plain text of its latest message."""
    return plain_text(text)[:PREVIEW_CHARS]
