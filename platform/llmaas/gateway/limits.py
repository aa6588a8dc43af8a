"""Per-key requests/min and tokens/min over a sliding 60-second window.

One ``RateLimiter`` lives in the gateway deployment (one replica), so every router replica
shares it: limits hold for the service, not per process.

Requests are counted when admitted. Tokens (prompt + completion) are counted when a request
ends, from the ledger row, and a key over its tokens/min gets no new request until its window
drops below the limit; so a key can pass its tokens/min by at most what its requests in flight
use, as with OpenAI's own limits.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

WINDOW_S = 60.0


@dataclass
class SlidingWindow:
    """Amounts added at times; ``total`` is what the last ``WINDOW_S`` seconds hold."""

    events: deque[tuple[float, int]] = field(default_factory=deque)
    total: int = 0

    def prune(self, now: float) -> None:
        while self.events and self.events[0][0] <= now - WINDOW_S:
            self.total -= self.events.popleft()[1]

    def add(self, now: float, amount: int) -> None:
        if amount > 0:
            self.events.append((now, amount))
            self.total += amount

    def wait_until_below(self, now: float, limit: int, need: int) -> float:
        """Seconds until ``total + need <= limit`` (as events leave the window); 0 when it is now."""
        self.prune(now)
        excess = self.total + need - limit
        if excess <= 0:
            return 0.0
        for at, amount in self.events:
            excess -= amount
            if excess <= 0:
                return at + WINDOW_S - now
        return WINDOW_S


@dataclass(frozen=True)
class Refusal:
    what: str  # "requests" or "tokens"
    limit: int
    retry_after_s: int


class RateLimiter:
    def __init__(self) -> None:
        self.requests: dict[str, SlidingWindow] = {}
        self.tokens: dict[str, SlidingWindow] = {}

    def admit(self, key_id: str, rpm: int | None, tpm: int | None, now: float) -> Refusal | None:
        """Count one request for ``key_id``, or say why it must wait (and count nothing)."""
        requests = self.requests.setdefault(key_id, SlidingWindow())
        if rpm is not None:
            wait = requests.wait_until_below(now, rpm, need=1)
            if wait > 0:
                return Refusal("requests", rpm, max(1, math.ceil(wait)))
        if tpm is not None:
            tokens = self.tokens.setdefault(key_id, SlidingWindow())
            wait = tokens.wait_until_below(now, tpm - 1, need=0)  # room for at least one token
            if wait > 0:
                return Refusal("tokens", tpm, max(1, math.ceil(wait)))
        requests.prune(now)
        requests.add(now, 1)
        return None

    def spend(self, key_id: str, tokens: int, now: float) -> None:
        window = self.tokens.setdefault(key_id, SlidingWindow())
        window.prune(now)
        window.add(now, tokens)
