"""Sharding: the hash functions and shard ownership (kube-state-metrics' scheme)."""

from __future__ import annotations

import pytest

from exporter.sharding import Shard, fnv1a_64, jump_hash


def test_fnv1a_64_known_vectors() -> None:
    assert fnv1a_64(b"") == 0xCBF29CE484222325
    assert fnv1a_64(b"a") == 0xAF63DC4C8601EC8C
    assert fnv1a_64(b"foobar") == 0x85944171F73967E8


@pytest.mark.parametrize(
    ("key", "buckets", "expected"),
    # Lamping and Veach's reference (also dgryski/go-jump's test vectors).
    [(0, 1, 0), (1, 1, 0), (42, 57, 43), (0xDEAD10CC, 1, 0), (0xDEAD10CC, 666, 361), (256, 1024, 520)],
)
def test_jump_hash_known_values(key: int, buckets: int, expected: int) -> None:
    assert jump_hash(key, buckets) == expected


@pytest.mark.parametrize("buckets", [0, -1])
def test_jump_hash_needs_a_bucket(buckets: int) -> None:
    with pytest.raises(ValueError, match="buckets"):
        jump_hash(1, buckets)


def test_jump_hash_moves_a_key_only_to_the_new_bucket() -> None:
    for key in (fnv1a_64(f"rack-{i}".encode()) for i in range(200)):
        for n in range(1, 20):
            before, after = jump_hash(key, n), jump_hash(key, n + 1)
            assert 0 <= before < n
            assert after in (before, n)


@pytest.mark.parametrize(("index", "total"), [(0, 0), (-1, 2), (2, 2), (5, 3)])
def test_shard_outside_its_range_is_rejected(index: int, total: int) -> None:
    with pytest.raises(ValueError, match="not in"):
        Shard(index, total)


def test_every_rack_has_exactly_one_owner() -> None:
    shards = [Shard(i, 3) for i in range(3)]
    racks = [f"00000000-0000-4000-8000-{n:012d}" for n in range(60)]
    owners = [[s.index for s in shards if s.owns(r)] for r in racks]
    assert all(len(o) == 1 for o in owners)
    assert {o[0] for o in owners} == {0, 1, 2}
    assert all(Shard().owns(r) for r in racks)
