"""Which replica owns which rack, when one exporter replica is not enough.

The scheme is kube-state-metrics': the owner of a rack is the jump consistent hash
(Lamping and Veach, 2014) of the 64-bit FNV-1a hash of its id, over the total shard count. It is
stable (a rack never moves while the shard count stays), needs no coordination (a StatefulSet's
ordinal is the shard), and moves only ~1/M of the racks when M changes.
"""

from __future__ import annotations

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
