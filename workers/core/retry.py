"""Retry delays for features that failed a ramp: exponential backoff with jitter.

Pure; the caller supplies the clock and, for reproducible tests, the random source.
"""

from __future__ import annotations

import random

from workers.errors import InvalidInput

__all__ = ["backoff_delay"]

# 2**64 base periods is beyond any cap; bounding the exponent avoids float overflow
_MAX_EXPONENT = 64


def backoff_delay(
    attempt: int, base_s: float, cap_s: float, rng: random.Random | None = None
) -> float:
    """Seconds to wait before retry ``attempt`` (0 = the first retry), in ``[base/2, cap]``.

    Full jitter with a floor: uniform in ``[base_s/2, min(cap_s, base_s·2^attempt)]``.
    Jitter spreads retries of features that failed together (a shared cause) so they do
    not come back in lock-step; the floor of ``base_s/2`` means that a flapping feature
    can never cycle faster than half its base backoff, whatever the dice say. Raises
    :class:`~workers.errors.InvalidInput` for a negative attempt, a non-positive base or a
    cap below the base.
    """
    if attempt < 0:
        raise InvalidInput(f"attempt must be >= 0, got {attempt}")
    if not base_s > 0:
        raise InvalidInput(f"base_s must be > 0, got {base_s}")
    if not cap_s >= base_s:
        raise InvalidInput(f"cap_s ({cap_s}) must be >= base_s ({base_s})")
    ceiling = min(cap_s, base_s * 2.0 ** min(attempt, _MAX_EXPONENT))
    return (rng or random).uniform(base_s / 2, ceiling)
