"""Logprobs as OpenAI shows them, from the engine's per-token entries and the model's token strings.

The engine reports, per token, the model's log-softmax before any sampling processor and the
top alternatives there (``llmaas.engine.types.TokenLogprob``); these functions only name the
tokens and shape the lists: the legacy completions shape (``tokens``, ``token_logprobs``,
``top_logprobs``, ``text_offset``) and the chat shape (``content[{token, logprob, bytes,
top_logprobs}]``). A logprob below -9999 (or not finite) is reported as -9999.0, as OpenAI does:
JSON has no -Infinity.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

from llmaas.engine.types import TokenLogprob
from llmaas.openai.protocol import CompletionLogprobs, TokenLogprobInfo, TopLogprob

#: OpenAI's value for a token too unlikely to tell
FLOOR = -9999.0


def clamp(logprob: float) -> float:
    """``logprob`` as JSON can carry it: at least -9999.0 (NaN too); +inf (no logprob is) as 0."""
    if math.isnan(logprob) or logprob < FLOOR:
        return FLOOR
    return 0.0 if math.isinf(logprob) else logprob


def token_ids(entries: Iterable[TokenLogprob | None]) -> set[int]:
    """Every token id ``entries`` name (the chosen ones and their alternatives)."""
    ids: set[int] = set()
    for entry in entries:
        if entry is not None:
            ids.add(entry.token_id)
            ids.update(token for token, _ in entry.top)
    return ids


def completion_logprobs(
    ids: Sequence[int],
    entries: Sequence[TokenLogprob | None],
    strings: Mapping[int, str],
    top: int,
    offset: int = 0,
) -> tuple[CompletionLogprobs, int]:
    """The legacy shape for tokens ``ids`` (entry None: no logprob, the prompt's first token),
    with ``top`` alternatives each, and the text offset after the last token.

    ``top_logprobs`` holds the ``top`` most likely tokens and the chosen one (so up to top + 1
    entries, as OpenAI says); two tokens with the same text keep the larger logprob. Offsets
    count the tokens' strings from ``offset`` (the text before them in the choice), as vLLM does.
    """
    out = CompletionLogprobs()
    for token, entry in zip(ids, entries, strict=True):
        text = strings.get(token, "")
        out.tokens.append(text)
        out.text_offset.append(offset)
        offset += len(text)
        if entry is None:
            out.token_logprobs.append(None)
            out.top_logprobs.append(None)
            continue
        chosen = clamp(entry.logprob)
        out.token_logprobs.append(chosen)
        alternatives: dict[str, float] = {}
        for alternative, logprob in entry.top[:top]:
            key = strings.get(alternative, "")
            alternatives[key] = max(alternatives.get(key, FLOOR), clamp(logprob))
        alternatives.setdefault(text, chosen)
        out.top_logprobs.append(alternatives)
    return out, offset


def _utf8(text: str) -> list[int]:
    return list(text.encode("utf-8", errors="replace"))


def chat_logprobs(
    entries: Sequence[TokenLogprob], strings: Mapping[int, str], top: int
) -> list[TokenLogprobInfo]:
    """The chat shape: one entry per generated token with its ``top`` most likely alternatives."""
    content = []
    for entry in entries:
        text = strings.get(entry.token_id, "")
        content.append(
            TokenLogprobInfo(
                token=text,
                logprob=clamp(entry.logprob),
                bytes=_utf8(text),
                top_logprobs=[
                    TopLogprob(
                        token=strings.get(alternative, ""),
                        logprob=clamp(logprob),
                        bytes=_utf8(strings.get(alternative, "")),
                    )
                    for alternative, logprob in entry.top[:top]
                ],
            )
        )
    return content
