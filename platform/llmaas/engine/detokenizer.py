"""Incremental detokenization with stop strings that may span token boundaries."""

from __future__ import annotations

from typing import Protocol


class Decoder(Protocol):
    def decode(self, token_ids: list[int], skip_special_tokens: bool = ...) -> str: ...


class IncrementalDetokenizer:
    """Turns generated token ids into text deltas and finds stop strings.

    Text that could still be the start of a stop string, or an incomplete UTF-8 character,
    is held back until the next token settles it, so a client never sees text that a stop
    string later removes.

    ``min_tokens`` (vLLM's rule): a stop string counts only if it ends in the text of the
    ``min_tokens``-th token or later; one that ends earlier is plain text.
    """

    # NOTE: decoding restarts from a window of recent tokens, not the whole sequence, so the
    # cost per token stays flat; the window keeps enough left context for byte-level merges.
    _WINDOW = 8

    def __init__(self, tokenizer: Decoder, stop: tuple[str, ...] = (), min_tokens: int = 0) -> None:
        self._tok = tokenizer
        self._stop = tuple(s for s in stop if s)
        self._min_tokens = min_tokens
        # NOTE: a stop string must end past this many characters of text (those of the tokens
        # before the min_tokens-th); None until that token arrives: no stop string counts yet
        self._stop_after: int | None = 0 if min_tokens <= 1 else None
        self._ids: list[int] = []
        self._prefix_offset = 0  # start of the decode window
        self._read_offset = 0  # tokens whose text is already in self._text
        self._text = ""  # settled text (may include held-back tail)
        self._emitted = 0  # characters of self._text already returned
        self.stopped = False

    @property
    def text(self) -> str:
        return self._text[: self._emitted]

    def _decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True)

    def push(self, token_id: int) -> str:
        """Add one token; return the text that is now safe to emit (maybe empty)."""
        if self.stopped:
            return ""
        self._ids.append(token_id)
        if self._stop_after is None and len(self._ids) >= self._min_tokens:
            self._stop_after = len(self._text)  # NOTE: held tokens' text is not in _text yet
        prefix = self._decode(self._ids[self._prefix_offset : self._read_offset])
        full = self._decode(self._ids[self._prefix_offset :])
        if full.endswith("\ufffd") or len(full) <= len(prefix):
            return ""  # an incomplete character (or a special token): wait for more
        self._text += full[len(prefix) :]
        self._read_offset = len(self._ids)
        if self._read_offset - self._prefix_offset > self._WINDOW:
            self._prefix_offset = self._read_offset - self._WINDOW
        return self._release()

    def _release(self) -> str:
        if self._stop and self._stop_after is not None:
            # A stop string may begin inside text that was held back earlier (but must end past
            # _stop_after: before min_tokens it is plain text).
            hits = [
                i
                for i in (
                    self._text.find(s, max(0, self._emitted - len(s) + 1, self._stop_after - len(s) + 1))
                    for s in self._stop
                )
                if i >= 0
            ]
            if hits:
                cut = min(hits)
                delta = self._text[self._emitted : cut]
                self._text = self._text[:cut]
                self._emitted = cut
                self.stopped = True
                return delta
        safe = len(self._text) - self._held_back()
        delta = self._text[self._emitted : safe] if safe > self._emitted else ""
        self._emitted = max(self._emitted, safe)
        return delta

    def _held_back(self) -> int:
        """Length of the longest tail of the text that is a proper prefix of a stop string."""
        longest = 0
        for stop in self._stop:
            for n in range(min(len(stop) - 1, len(self._text)), longest, -1):
                if self._text.endswith(stop[:n]):
                    longest = n
                    break
        return longest

    def flush(self) -> str:
        """The sequence ended without a stop string: release whatever was held back."""
        if self.stopped:
            return ""
        if self._read_offset < len(self._ids):  # tokens still held as an incomplete character
            prefix = self._decode(self._ids[self._prefix_offset : self._read_offset])
            full = self._decode(self._ids[self._prefix_offset :])
            self._text += full[len(prefix) :]
            self._read_offset = len(self._ids)
            if self._stop:
                return self._release() + ("" if self.stopped else self.flush())
        delta = self._text[self._emitted :]
        self._emitted = len(self._text)
        return delta
