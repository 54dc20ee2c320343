"""The helper contract: what the core calls for a connection that has a helper, and the limits
every helper declares for its expectations (kernel include/net/netfilter/nf_conntrack_helper.h:
struct nf_conntrack_helper, struct nf_conntrack_expect_policy).

Rules:
1. A helper is stateless and shared: per-connection data lives on the Conn (``conn.extra``,
   under the helper's own key), like the kernel's ``nfct_help_data(ct)`` area. So one helper
   object serves every engine in the process (a simulated pair included).
2. ``help()`` is called by the core for an *accepted* packet of an entry whose helper it is,
   after the L4 tracker ran and before the entry is confirmed (kernel nf_confirm(): helper->help()
   runs at POSTROUTING/INPUT, just before nf_conntrack_confirm()). It returns None (accept) or a
   drop reason (the kernel's NF_DROP from a helper); it never raises on bad input.
3. Helpers are assigned by configured port, like an nftables ``ct helper`` object with a
   ``ct helper set`` rule: only the first packet of a new entry is considered (nft_ct.c
   nft_ct_helper_obj_eval(): ``nf_ct_is_confirmed(ct)`` returns early), and the entry gets the
   HELPER status bit (``set_bit(IPS_HELPER_BIT, &ct->status)``). There is no automatic
   assignment by well-known port (the kernel's nf_conntrack_helper=0 default since 4.7).
4. ``state`` is the packet's ctstate as the kernel's ctinfo would have it when the helper runs
   (CtState NEW / ESTABLISHED / RELATED, plus the direction ``d``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from pmct.conntrack.constants import CtState

if TYPE_CHECKING:
    from pmct.conntrack.conn import Conn
    from pmct.conntrack.expect import ExpectTable

__all__ = ["ESTABLISHED", "NEW", "RELATED", "ExpectPolicy", "Helper"]

NEW: Final = int(CtState.NEW)
ESTABLISHED: Final = int(CtState.ESTABLISHED)
RELATED: Final = int(CtState.RELATED)


@dataclass(frozen=True, slots=True)
class ExpectPolicy:
    """kernel struct nf_conntrack_expect_policy: per expectation class of a helper."""

    max_expected: int  # 0 = no per-master limit
    timeout: float  # seconds an expectation waits for its connection
    name: str = ""  # the class name, printed by /proc/net/nf_conntrack_expect when set


class Helper:
    """Base class of a connection helper (kernel struct nf_conntrack_helper).

    Subclasses set ``name``, ``l4proto``, ``default_port`` and ``policies`` (one per
    expectation class; FTP and TFTP have one) and implement ``help()``.
    """

    __slots__ = ()

    name: str = ""
    l4proto: int = 0
    default_port: int = 0
    policies: tuple[ExpectPolicy, ...] = ()

    def help(
        self,
        conn: Conn,
        d: int,
        state: int,
        data: bytes,
        start: int,
        end: int,
        seq: int,
        expect: ExpectTable,
        now: float,
    ) -> str | None:
        """Look at one accepted packet of ``conn``: ``data[start:end]`` is its L4 payload,
        ``seq`` the TCP sequence number of its first byte (0 for UDP). Returns None to
        accept, or the reason the kernel would drop it for."""
        raise NotImplementedError

    def attach(self, conn: Conn) -> None:
        """Initialise the helper's per-connection data when the helper is assigned to a new
        entry (kernel nf_ct_helper_ext_add(): a zeroed help area). Default: none."""

    def from_sync(self, conn: Conn) -> None:
        """The entry was injected from the peer (kernel helper->from_nlattr() on a ctnetlink
        create/update). Default: nothing to do."""

    def __repr__(self) -> str:
        return f"<helper {self.name}>"
