"""The TFTP helper: a read or write request expects the server's answer from a new port
(kernel net/netfilter/nf_conntrack_tftp.c).

A TFTP server answers a request sent to port 69 from a fresh port of its own (RFC 1350 §4:
"a transfer is established by sending a request (WRQ to write onto a foreign file system, or
RRQ to read from it) ... each end chooses a TID"), so the reply is a new UDP flow that plain
tracking calls NEW. The kernel's tftp_help() reads the opcode of every packet of the control
entry; on RRQ (1) or WRQ (2) it expects a UDP flow from the server's address, any source port,
to the client's address and port: the reply tuple with the source port masked out. There is no
"both ways first" rule here: the very first request creates the expectation (the master is
confirmed right after, before any answer can arrive). A repeated request refreshes the
expectation (same master, same tuple). Policy: 1 per master, 5 minutes. No private data.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from pmct.conntrack.expect import expect_init, split_key
from pmct.conntrack.helpers.base import ExpectPolicy, Helper
from pmct.conntrack.keys import IPPROTO_UDP

if TYPE_CHECKING:
    from pmct.conntrack.conn import Conn
    from pmct.conntrack.expect import ExpectTable

__all__ = ["TFTP", "TFTP_POLICY", "TftpHelper"]

TFTP_PORT: Final = 69
TFTP_POLICY: Final = ExpectPolicy(max_expected=1, timeout=5 * 60.0)  # tftp_exp_policy

# kernel include/linux/netfilter/nf_conntrack_tftp.h
TFTP_OPCODE_READ: Final = 1
TFTP_OPCODE_WRITE: Final = 2


class TftpHelper(Helper):
    """kernel nf_conntrack_tftp: ``tftp_help()`` for UDP port 69 (or what is configured)."""

    __slots__ = ()

    name = "tftp"
    l4proto = IPPROTO_UDP
    default_port = TFTP_PORT
    policies = (TFTP_POLICY,)

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
        if end - start < 2:  # skb_header_pointer() of the 2-byte tftphdr fails: accept
            return None
        opcode = (data[start] << 8) | data[start + 1]
        if opcode != TFTP_OPCODE_READ and opcode != TFTP_OPCODE_WRITE:
            return None  # DATA, ACK, ERROR and unknown opcodes: nothing to expect
        reply = split_key(conn.rkey)
        if reply is None:
            return None
        _proto, src, dst, _sport, dport = reply
        exp = expect_init(conn, 0, conn.l3, src, dst, IPPROTO_UDP, None, dport)
        if expect.related(exp, TFTP_POLICY, now) is not None:
            return "nf_ct_tftp: dropping packet: cannot add expectation"
        return None


TFTP: Final = TftpHelper()
