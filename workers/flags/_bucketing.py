"""The gradual-rollout bucket: which of 100 buckets a key falls in for a feature.

The rule (the Unleash gradual-rollout rule, reproducible in any language):

1. Take the UTF-8 bytes of ``"<feature>:<key>"`` (feature name, a colon, the key).
2. Hash them with MurmurHash3, x86 32-bit variant, seed 0, read as an **unsigned** 32-bit
   integer.
3. ``bucket = hash % 100 + 1`` (so 1..100).
4. A TESTING feature at ``percent`` is on for the key when ``bucket <= percent``.

The bucket does not depend on the percent, so raising the percent only ever adds keys, and
0 % is nobody while 100 % is everybody.
"""

from __future__ import annotations

import mmh3

__all__ = ["BUCKETS", "bucket"]

#: The number of buckets; percentages are whole buckets.
BUCKETS = 100

# Bound once: the hot path calls it positionally (data, seed=0, signed=False).
_murmur3_32 = mmh3.hash


def bucket(feature: str, key: str) -> int:
    """The bucket (1..100) of ``key`` for ``feature``; see the module docstring for the rule.

    Raises ``UnicodeEncodeError`` for text that has no UTF-8 form (lone surrogates).
    """
    text = f"{feature}:{key}"
    # mmh3 5.x hashes an ASCII str without copying, but it crashes the interpreter
    # (SIGSEGV) on a str holding a lone surrogate; non-ASCII text is encoded here first,
    # which is both the UTF-8 the rule asks for and a clean exception for bad text.
    return int(_murmur3_32(text if text.isascii() else text.encode(), 0, False)) % BUCKETS + 1
