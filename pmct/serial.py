"""32-bit serial-number arithmetic (RFC 1982), as the kernel's before()/after() in net/tcp.h.

TCP window tracking and ct_sync sequence numbers both use it: never compare sequence
numbers with ``<``.
"""

from __future__ import annotations

from typing import Final

__all__ = ["MASK32", "after", "before", "between", "seq_add"]

MASK32: Final = 0xFFFF_FFFF


def before(a: int, b: int) -> bool:
    """a precedes b modulo 2**32: kernel ``(__s32)(seq1 - seq2) < 0``."""
    return ((a - b) & MASK32) >= 0x8000_0000


def after(a: int, b: int) -> bool:
    """a follows b modulo 2**32."""
    return ((b - a) & MASK32) >= 0x8000_0000


def between(seq: int, low: int, high: int) -> bool:
    """low <= seq <= high modulo 2**32 (kernel ``between()``)."""
    return ((high - low) & MASK32) >= ((seq - low) & MASK32)


def seq_add(a: int, n: int) -> int:
    return (a + n) & MASK32
