"""Connection helpers and their assignment by port (kernel nf_conntrack_helper.c, nft_ct.c).

``HELPERS`` is the registry by name (kernel nf_conntrack_helper_try_module_get(name, ...)).
Which connections get a helper is configuration, like an nftables ruleset with
``ct helper ftp-21 { type "ftp" protocol tcp; }`` and ``tcp dport 21 ct helper set "ftp-21"``:
``assignments({"ftp": [21], "tftp": [69]})`` builds the ``(l4proto, dport) -> helper`` map the
engine consults for the first packet of every new entry. Nothing is assigned automatically.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

from pmct.conntrack.helpers.base import ExpectPolicy, Helper
from pmct.conntrack.helpers.ftp import FTP, FtpHelper
from pmct.conntrack.helpers.tftp import TFTP, TftpHelper

__all__ = [
    "HELPERS",
    "ExpectPolicy",
    "FtpHelper",
    "Helper",
    "TftpHelper",
    "assignments",
    "get_helper",
]

HELPERS: Final[dict[str, Helper]] = {FTP.name: FTP, TFTP.name: TFTP}


def get_helper(name: str) -> Helper | None:
    """The registered helper called ``name`` (what ct_sync's record carries), or None."""
    return HELPERS.get(name)


def assignments(
    helpers: Mapping[str, Iterable[int]] | None = None, *, ftp_helper: bool = False
) -> dict[tuple[int, int], Helper]:
    """``{"ftp": [21, 2121], "tftp": [69]}`` -> ``{(6, 21): FTP, (6, 2121): FTP, (17, 69):
    TFTP}``; ``ftp_helper=True`` adds FTP on TCP 21 (kernel_oracle.py --ftp-helper).

    Raises:
        ValueError: an unknown helper name, a port outside 1..65535, or one port given to two
            helpers (a configuration mistake, reported before any packet is seen).
    """
    wanted: dict[str, list[int]] = {}
    for name, ports in (helpers or {}).items():
        wanted.setdefault(name, []).extend(ports)
    if ftp_helper:
        wanted.setdefault(FTP.name, []).append(FTP.default_port)
    out: dict[tuple[int, int], Helper] = {}
    for name, ports in wanted.items():
        helper = HELPERS.get(name)
        if helper is None:
            raise ValueError(f"unknown conntrack helper {name!r} (known: {sorted(HELPERS)})")
        for port in ports:
            if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
                raise ValueError(f"helper {name!r}: port must be 1..65535, not {port!r}")
            slot = (helper.l4proto, port)
            other = out.get(slot)
            if other is not None and other is not helper:
                raise ValueError(f"port {port} is assigned to both {other.name} and {name}")
            out[slot] = helper
    return out
