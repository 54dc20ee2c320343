"""Exception family for local mistakes (bad config, API misuse, malformed sync messages).

Bad *remote* input (packets) is never an exception: trackers return INVALID with a reason.
"""

from __future__ import annotations

__all__ = ["ConfigError", "MalformedMessage", "PmctError"]


class PmctError(Exception):
    """Base of every error pmct raises on purpose."""


class ConfigError(PmctError):
    """A configuration file or value is wrong; the message names the key."""


class MalformedMessage(PmctError):
    """A sync datagram or record could not be decoded."""
