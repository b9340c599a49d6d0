"""Sharding: the hash functions, shard ownership (kube-state-metrics' scheme) and budget shares."""

from __future__ import annotations

import pytest

from exporter.config import Config
from exporter.sharding import Budget, Shard, fnv1a_64, jump_hash, replica_budget


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


@pytest.mark.parametrize(
    ("fleet", "shards", "max_rate", "max_burst", "expected"),
    # Worked by hand: rate = fleet / shards capped at max_rate; burst = one second of the rate,
    # rounded up, within [1, max_burst].
    [
        (10.0, 1, 10.0, 10, Budget(10.0, 10)),
        (10.0, 2, 10.0, 10, Budget(5.0, 5)),
        (10.0, 4, 10.0, 10, Budget(2.5, 3)),
        (10.0, 20, 10.0, 10, Budget(0.5, 1)),
        (40.0, 2, 10.0, 10, Budget(10.0, 10)),  # never more than one client may send
        (40.0, 2, 25.0, 30, Budget(20.0, 20)),
        (100.0, 2, 100.0, 10, Budget(50.0, 10)),  # never a burst above api.burst
    ],
)
def test_each_replica_takes_its_share_of_the_fleet_budget(
    fleet: float, shards: int, max_rate: float, max_burst: int, expected: Budget
) -> None:
    assert replica_budget(fleet, shards, max_rate=max_rate, max_burst=max_burst) == expected


@pytest.mark.parametrize(("fleet", "shards"), [(0.0, 1), (-1.0, 1), (10.0, 0)])
def test_a_budget_share_needs_a_budget_and_a_shard(fleet: float, shards: int) -> None:
    with pytest.raises(ValueError, match="must be"):
        replica_budget(fleet, shards, max_rate=10.0, max_burst=10)


def _config(**sharding: object) -> Config:
    return Config.model_validate(
        {"api": {"url": "https://nico.example.com", "org": "acme", "token": "t"}, "sharding": sharding}
    )


def test_without_a_fleet_budget_each_replica_spends_its_own() -> None:
    config = _config(shard=1, total_shards=4)
    assert config.sharding.request_budget(7.0, 6) == Budget(7.0, 6)


def test_a_fleet_budget_is_split_over_the_shards() -> None:
    config = _config(shard=1, total_shards=4, fleet_max_requests_per_second=10)
    assert config.sharding.request_budget(10.0, 10) == Budget(2.5, 3)


@pytest.mark.parametrize("value", [0, -5, float("inf")])
def test_a_fleet_budget_must_be_a_positive_rate(value: float) -> None:
    with pytest.raises(ValueError, match="fleet_max_requests_per_second"):
        _config(fleet_max_requests_per_second=value)
