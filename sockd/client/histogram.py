"""Latency statistics that cost one list increment per sample.

A load run may answer hundreds of thousands of requests a second for minutes, so
samples go into a log-linear histogram (HDR-like: 128 linear steps per power of
two, at most 0.8% error, about 8,000 counters whatever the run's length) instead
of a list.  Minimum, maximum, sum and sum of squares are kept exactly, so ping's
min/avg/max/mdev are exact and only the percentiles are bucketed.
"""

from __future__ import annotations

import math

#: Linear steps per power of two above LINEAR: 2**SUB_BITS (128, at most 1/128 = 0.8% wide).
SUB_BITS = 7
#: Bits of a value that pick its slot: the leading one and SUB_BITS below it.
LINEAR_BITS = SUB_BITS + 1
#: Values below this (in ns) get a slot each; above it, the slot's width doubles with each power of two.
LINEAR = 1 << LINEAR_BITS
#: Enough slots for values up to 2**60 ns (36 years).
BUCKETS = (60 << SUB_BITS) + LINEAR


def bucketOf(value: int) -> int:
    """The histogram slot of C{value} (ns): the value itself below LINEAR, else its power of two and top bits."""
    if value < LINEAR:
        return value if value > 0 else 0
    shift = value.bit_length() - LINEAR_BITS
    return (shift << SUB_BITS) + (value >> shift)


def bucketBounds(index: int) -> tuple[int, int]:
    """The lowest value of slot C{index} and its width."""
    if index < LINEAR:
        return index, 1
    shift = (index >> SUB_BITS) - 1
    return (index - (shift << SUB_BITS)) << shift, 1 << shift


def quantileName(q: float) -> str:
    """0.5 -> p50, 0.999 -> p999."""
    text = f"{q * 100:g}".replace(".", "")
    return f"p{text}"


class Histogram:
    """Round-trip times in nanoseconds."""

    __slots__ = ("counts", "count", "total", "squares", "low", "high")

    def __init__(self) -> None:
        self.counts = [0] * BUCKETS
        self.count = 0
        self.total = 0
        self.squares = 0
        self.low: int | None = None
        self.high: int | None = None

    def record(self, value: int) -> None:
        """One sample (ping's path: exact sums as well as the bucket)."""
        self.counts[bucketOf(value)] += 1
        self.count += 1
        self.total += value
        self.squares += value * value
        if self.low is None or value < self.low:
            self.low = value
        if self.high is None or value > self.high:
            self.high = value

    def absorb(self, counts: list[int], total: int) -> None:
        """Take a hot loop's own bucket list (and exact sum); min and max come from the buckets."""
        self.counts = counts
        self.count = sum(counts)
        self.total = total
        self.squares = 0
        occupied = [i for i, n in enumerate(counts) if n]
        if occupied:
            self.low = bucketBounds(occupied[0])[0]
            start, width = bucketBounds(occupied[-1])
            self.high = start + width - 1

    def percentile(self, q: float) -> int | None:
        """The nearest-rank C{q} quantile (0 < q <= 1): the middle of its bucket, within [min, max]."""
        if not self.count:
            return None
        rank = max(1, math.ceil(q * self.count))
        seen = 0
        for index, n in enumerate(self.counts):
            if n:
                seen += n
                if seen >= rank:
                    start, width = bucketBounds(index)
                    value = start + (width - 1) // 2
                    if self.low is not None:
                        value = max(value, self.low)
                    if self.high is not None:
                        value = min(value, self.high)
                    return value
        return self.high

    def mean(self) -> float | None:
        """The exact mean, or None with no samples."""
        return self.total / self.count if self.count else None

    def mdev(self) -> float | None:
        """ping's mdev: sqrt(mean of squares - square of mean), from the exact sums."""
        if not self.count or not self.squares:
            return None if not self.count else 0.0
        mean = self.total / self.count
        return math.sqrt(max(self.squares / self.count - mean * mean, 0.0))

    def summary(self, quantiles: tuple[float, ...] = (0.5, 0.9, 0.99)) -> dict[str, float | None]:
        """Milliseconds, rounded to the microsecond's thousandth: min, avg, max, mdev, p50, p90, p99..."""
        def ms(ns: float | None) -> float | None:
            return None if ns is None else round(ns / 1e6, 6)

        out: dict[str, float | None] = {"min": ms(self.low), "avg": ms(self.mean()), "max": ms(self.high),
                                        "mdev": ms(self.mdev()) if self.squares or not self.count else None}
        for q in quantiles:
            out[quantileName(q)] = ms(self.percentile(q))
        return out
