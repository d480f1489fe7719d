"""The gradual-rollout bucket: pinned murmur3 vectors, an independent reference, monotonicity."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workers.flags import BUCKETS, FlagClient, bucket
from workers.flags._bucketing import _murmur3_32


def murmur3_x86_32(data: bytes, seed: int = 0) -> int:
    """MurmurHash3 x86 32-bit, written from the reference C code (independent of mmh3)."""
    c1, c2, mask = 0xCC9E2D51, 0x1B873593, 0xFFFFFFFF
    h = seed & mask
    n = len(data) // 4 * 4
    for i in range(0, n, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * c1) & mask
        k = ((k << 15) | (k >> 17)) & mask
        k = (k * c2) & mask
        h ^= k
        h = ((h << 13) | (h >> 19)) & mask
        h = (h * 5 + 0xE6546B64) & mask
    k = 0
    for j, byte in enumerate(data[n:]):
        k |= byte << (8 * j)
    if len(data) > n:
        k = (k * c1) & mask
        k = ((k << 15) | (k >> 17)) & mask
        k = (k * c2) & mask
        h ^= k
    h ^= len(data)
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & mask
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & mask
    h ^= h >> 16
    return h


# Published MurmurHash3_x86_32 seed-0 vectors (SMHasher / Wikipedia).
KNOWN_HASHES = [
    (b"", 0x00000000),
    (b"hello", 0x248BFA47),
    (b"The quick brown fox jumps over the lazy dog", 0x2E4FF723),
]

# The contract for other languages: hash of UTF-8 "<feature>:<key>" and its bucket.
# Cross-checked against UnleashClient 6.9.1's flexibleRollout (groupId = feature name).
VECTORS = [
    ("checkout", "user-1", 3498952333, 34),
    ("checkout", "user-42", 2382546941, 42),
    ("search-v2", "42", 501882107, 8),
    ("payments", "alice@example.com", 1215671566, 67),
    ("checkout", "ü", 1543697605, 6),
    ("checkout", "日本語", 3693969956, 57),
    ("checkout", "émoji-😀", 3724082590, 91),
    ("cafés", "José", 2514782619, 20),
    ("", "", 723937430, 31),
]


@pytest.mark.parametrize(("data", "expected"), KNOWN_HASHES)
def test_reference_implementation_matches_published_vectors(data: bytes, expected: int) -> None:
    """The test's own murmur3 reproduces the published seed-0 vectors."""
    assert murmur3_x86_32(data) == expected


@pytest.mark.parametrize(("data", "expected"), KNOWN_HASHES)
def test_library_hash_matches_published_vectors(data: bytes, expected: int) -> None:
    """The hash the client uses is unsigned murmur3 x86 32-bit with seed 0."""
    assert _murmur3_32(data, 0, False) == expected


@pytest.mark.parametrize(("feature", "key", "hashed", "expected_bucket"), VECTORS)
def test_bucket_vectors(feature: str, key: str, hashed: int, expected_bucket: int) -> None:
    """bucket() is murmur3 of the UTF-8 bytes of "<feature>:<key>", % 100 + 1 (pinned)."""
    assert murmur3_x86_32(f"{feature}:{key}".encode()) == hashed
    assert bucket(feature, key) == expected_bucket == hashed % 100 + 1


@given(st.text(), st.text())
def test_bucket_equals_reference_for_any_text(feature: str, key: str) -> None:
    """For any text with a UTF-8 form, bucket() agrees with the independent reference."""
    try:
        data = f"{feature}:{key}".encode()
    except UnicodeEncodeError:
        with pytest.raises(UnicodeEncodeError):
            bucket(feature, key)
        return
    assert bucket(feature, key) == murmur3_x86_32(data) % BUCKETS + 1


@given(st.text(max_size=20), st.text(max_size=40))
def test_bucket_range(feature: str, key: str) -> None:
    """Every bucket lies in 1..100."""
    with contextlib.suppress(UnicodeEncodeError):
        assert 1 <= bucket(feature, key) <= 100


@given(
    st.text(max_size=20),
    st.lists(st.text(max_size=20), max_size=30),
    st.integers(0, 100),
    st.integers(0, 100),
)
def test_raising_the_percent_only_adds_keys(
    feature: str, keys: list[str], low: int, high: int
) -> None:
    """The keys enabled at a lower percent are a subset of those enabled at a higher one."""
    low, high = sorted((low, high))
    at_low = FlagClient.from_snapshot({feature: {"state": "TESTING", "percent": low}})
    at_high = FlagClient.from_snapshot({feature: {"state": "TESTING", "percent": high}})
    on_low = {k for k in keys if at_low.is_enabled(feature, k)}
    on_high = {k for k in keys if at_high.is_enabled(feature, k)}
    assert on_low <= on_high


def test_percent_share_is_close_to_the_percent() -> None:
    """Over 10,000 keys, each percent enables about that share (uniform buckets)."""
    keys = [f"user-{i}" for i in range(10_000)]
    buckets = [bucket("checkout", k) for k in keys]
    for percent in (1, 10, 30, 50, 90):
        share = sum(b <= percent for b in buckets) / len(keys)
        assert abs(share - percent / 100) < 0.02


def test_edges_zero_is_nobody_and_hundred_is_everybody() -> None:
    """TESTING at 0 % enables no key; at 100 % enables every key."""
    keys = [f"k{i}" for i in range(500)]
    none = FlagClient.from_snapshot({"f": {"state": "TESTING", "percent": 0}})
    every = FlagClient.from_snapshot({"f": {"state": "TESTING", "percent": 100}})
    assert not any(none.is_enabled("f", k) for k in keys)
    assert all(every.is_enabled("f", k) for k in keys)


def test_agrees_with_unleash_gradual_rollout() -> None:
    """UnleashClient's flexibleRollout (offline, groupId = feature) decides every key alike."""
    unleash = pytest.importorskip("UnleashClient")
    import tempfile

    from UnleashClient.cache import FileCache

    percents = (5, 50, 95)
    cache = FileCache("flags-test", directory=tempfile.mkdtemp(prefix="unleash-"))
    cache.bootstrap_from_dict(
        {
            "version": 1,
            "features": [
                {
                    "name": f"f{p}",
                    "enabled": True,
                    "strategies": [
                        {
                            "name": "flexibleRollout",
                            "parameters": {
                                "rollout": str(p),
                                "stickiness": "userId",
                                "groupId": f"f{p}",
                            },
                        }
                    ],
                }
                for p in percents
            ],
        }
    )
    client = unleash.UnleashClient(
        url="http://127.0.0.1:9",
        app_name="flags-test",
        disable_metrics=True,
        disable_registration=True,
        cache=cache,
    )
    client.initialize_client(fetch_toggles=False)
    try:
        ours = FlagClient.from_snapshot(
            {f"f{p}": {"state": "TESTING", "percent": p} for p in percents}
        )
        keys = [f"user-{i}" for i in range(300)] + ["ü", "日本語", "émoji-😀", "José"]
        for p in percents:
            for k in keys:
                assert ours.is_enabled(f"f{p}", k) == client.is_enabled(f"f{p}", {"userId": k})
    finally:
        client.destroy()
