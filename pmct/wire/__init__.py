"""Pure packet parsers: bytes in, a Packet (or a parse error reason) out."""

from __future__ import annotations
