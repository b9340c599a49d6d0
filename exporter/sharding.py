"""Which replica owns which rack, when one exporter replica is not enough.

The scheme is kube-state-metrics': the owner of a rack is the jump consistent hash
(Lamping and Veach, 2014) of the 64-bit FNV-1a hash of its id, over the total shard count. It is
stable (a rack never moves while the shard count stays), needs no coordination (a StatefulSet's
ordinal is the shard), and moves only ~1/M of the racks when M changes.

The replicas may also share one request budget (``sharding.fleet_max_requests_per_second``):
each then spends an equal share of it (:func:`replica_budget`), so one number, the shard count,
sizes the fleet.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

_FNV64_OFFSET = 0xCBF29CE484222325
_FNV64_PRIME = 0x100000001B3
_MASK64 = 0xFFFFFFFFFFFFFFFF


def fnv1a_64(data: bytes) -> int:
    h = _FNV64_OFFSET
    for byte in data:
        h = ((h ^ byte) * _FNV64_PRIME) & _MASK64
    return h


def jump_hash(key: int, buckets: int) -> int:
    """Jump consistent hash of a 64-bit key into ``buckets`` buckets."""
    if buckets < 1:
        raise ValueError("buckets must be >= 1")
    b, j = -1, 0
    while j < buckets:
        b = j
        key = (key * 2862933555777941757 + 1) & _MASK64
        j = int((b + 1) * ((1 << 31) / ((key >> 33) + 1)))
    return b


@dataclass(frozen=True)
class Shard:
    """This replica's place: shard ``index`` of ``total``."""

    index: int = 0
    total: int = 1

    def __post_init__(self) -> None:
        if self.total < 1 or not 0 <= self.index < self.total:
            raise ValueError(f"shard {self.index} is not in [0, {self.total})")

    def owns(self, rack_id: str) -> bool:
        if self.total == 1:
            return True
        return jump_hash(fnv1a_64(rack_id.encode()), self.total) == self.index


@dataclass(frozen=True)
class Budget:
    """One replica's request budget: a token bucket's rate (requests per second) and burst."""

    rate: float
    burst: int


def replica_budget(fleet_rate: float, total_shards: int, *, max_rate: float, max_burst: int) -> Budget:
    """This replica's equal share of a request budget the whole fleet of replicas shares.

    The rate is ``fleet_rate / total_shards``, never above ``max_rate`` (what one client may
    send: NICo's limiter counts requests per client address). The burst is one second of that
    rate, rounded up, at least 1 and at most ``max_burst``: the replicas' bursts add up to about
    one second of the fleet's budget, as a single replica's default (10 req/s, burst 10) does,
    so replicas that reach NICo from one address do not trip its limiter together.
    """
    if total_shards < 1:
        raise ValueError("total_shards must be >= 1")
    if fleet_rate <= 0 or max_rate <= 0 or max_burst < 1:
        raise ValueError("rates must be > 0 and max_burst >= 1")
    rate = min(fleet_rate / total_shards, max_rate)
    return Budget(rate=rate, burst=max(1, min(max_burst, math.ceil(rate))))
