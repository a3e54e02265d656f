"""Token buckets, per key and global, with bounded memory.

Used for the per-source connection rate (xinetd's cps), the per-source datagram
answer rate and the global answer budget, and to keep refusal logs from
becoming a flood of their own.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable


class TokenBucket:
    """C{rate} tokens a second, holding at most C{burst}."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = now

    def take(self, now: float, cost: float = 1.0) -> bool:
        """Spend C{cost} tokens if there are enough; refill first by the time elapsed."""
        # max(): a wall clock stepped back must not drain the bucket.
        tokens = min(self.burst, self.tokens + max(0.0, now - self.stamp) * self.rate)
        self.stamp = now
        if tokens >= cost:
            self.tokens = tokens - cost
            return True
        self.tokens = tokens
        return False


class KeyedBuckets:
    """One token bucket per key, least recently used keys forgotten past C{maxKeys}.

    Forgetting a key refills its bucket, so the bound trades a little leniency
    towards an attacker with very many addresses for memory that cannot grow.
    """

    def __init__(self, rate: float, burst: float, seconds: Callable[[], float], maxKeys: int = 65536) -> None:
        self.rate = rate
        self.burst = burst
        self.seconds = seconds
        self.maxKeys = maxKeys
        self._buckets: OrderedDict[Hashable, TokenBucket] = OrderedDict()

    def take(self, key: Hashable) -> bool:
        if self.rate <= 0:
            return True
        now = self.seconds()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, now)
            if len(self._buckets) > self.maxKeys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return bucket.take(now)

    def __len__(self) -> int:
        return len(self._buckets)


class GlobalBucket:
    """A single budget shared by everyone (the global datagram answer budget)."""

    def __init__(self, rate: float, seconds: Callable[[], float]) -> None:
        self.rate = rate
        self.seconds = seconds
        self._bucket = TokenBucket(rate, max(rate, 1.0), seconds())

    def take(self) -> bool:
        return self.rate <= 0 or self._bucket.take(self.seconds())


class LogThrottle:
    """Says whether to log an event for a key: at most once per C{interval} per key."""

    def __init__(self, interval: float, seconds: Callable[[], float], maxKeys: int = 4096) -> None:
        self.interval = interval
        self.seconds = seconds
        self.maxKeys = maxKeys
        self._last: OrderedDict[Hashable, float] = OrderedDict()
        self.suppressed = 0

    def allow(self, key: Hashable) -> bool:
        now = self.seconds()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self.suppressed += 1
            return False
        self._last[key] = now
        self._last.move_to_end(key)
        if len(self._last) > self.maxKeys:
            self._last.popitem(last=False)
        return True
