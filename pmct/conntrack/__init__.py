"""The pure conntrack engine: bytes and a timestamp in, verdicts and events out."""

from __future__ import annotations
