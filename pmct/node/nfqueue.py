"""The NFQUEUE binding: the kernel hands pmct each queued IP datagram, pmct returns a verdict.

Owns one resource: the netfilterqueue handle (a netlink socket bound to one queue number).

Rules:
1. netfilterqueue is the binding (measurements.md §4: ~60k packets/s one verdict at a time on
   the reference VM). It has no API for the queue flags, so NFQA_CFG_F_FAIL_OPEN and
   NFQA_CFG_F_GSO are set by sending NFQNL_MSG_CONFIG ourselves on a dup of its socket: the
   kernel accepts queue config only from the bound netlink portid, and a dup has the same one
   (kernel: net/netfilter/nfnetlink_queue.c nfqnl_recv_config()).
2. netfilterqueue receives into a fixed 4096-byte buffer. With GSO a super-packet message
   longer than that is truncated and never gets a verdict (measured: TCP stalls), so with GSO
   the copy range is cut to GSO_COPY_RANGE bytes (headers only; IP tot_len still tells the
   engine the true length).
3. The callback must never raise into netfilterqueue (an exception there aborts run() and the
   packet keeps no verdict): the daemon wraps all per-packet work; this module only drains.
4. Queue overflow is counted by the kernel, not by us: read_queue_stats() reads
   /proc/net/netfilter/nfnetlink_queue (queue_dropped = queue full, user_dropped = the socket
   buffer was full; kernel: nfnetlink_queue.c seq_show()).
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "GSO_COPY_RANGE",
    "NFQA_CFG_F_FAIL_OPEN",
    "NFQA_CFG_F_GSO",
    "Queue",
    "QueueStats",
    "read_queue_stats",
]

NETLINK_NETFILTER: Final = 12
NFNL_SUBSYS_QUEUE: Final = 3
NFQNL_MSG_CONFIG: Final = 2
NFQA_CFG_MASK: Final = 4
NFQA_CFG_FLAGS: Final = 5
NFQA_CFG_F_FAIL_OPEN: Final = 0x1
NFQA_CFG_F_CONNTRACK: Final = 0x2
NFQA_CFG_F_GSO: Final = 0x4
NLM_F_REQUEST: Final = 0x1
NLM_F_ACK: Final = 0x4
NLMSG_ERROR: Final = 2

# netfilterqueue: BufferSize 4096 - metadata; a GSO super-packet must fit in one recv.
MAX_COPY_RANGE: Final = 4016
GSO_COPY_RANGE: Final = 256

_NLMSGHDR: Final = struct.Struct("=IHHII")
_NFGENMSG: Final = struct.Struct("=BBH")
_NLA: Final = struct.Struct("=HH")
_U32BE: Final = struct.Struct("!I")


def _nla(atype: int, payload: bytes) -> bytes:
    n = _NLA.size + len(payload)
    return _NLA.pack(n, atype) + payload + b"\0" * (-n % 4)


def config_flags_message(queue: int, flags: int, mask: int, seq: int = 1) -> bytes:
    """NFQNL_MSG_CONFIG setting NFQA_CFG_FLAGS under NFQA_CFG_MASK, asking for an ACK."""
    body = _NFGENMSG.pack(socket.AF_UNSPEC, 0, socket.htons(queue))
    body += _nla(NFQA_CFG_FLAGS, _U32BE.pack(flags)) + _nla(NFQA_CFG_MASK, _U32BE.pack(mask))
    mtype = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_CONFIG
    return (
        _NLMSGHDR.pack(_NLMSGHDR.size + len(body), mtype, NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body
    )


@dataclass(frozen=True, slots=True)
class QueueStats:
    """One line of /proc/net/netfilter/nfnetlink_queue."""

    queue: int
    portid: int
    waiting: int  # queue_total: packets waiting for a verdict now
    queue_dropped: int  # the queue was full (max_len)
    user_dropped: int  # the netlink socket buffer was full
    id_sequence: int  # last packet id: packets queued so far


def read_queue_stats(
    queue: int, path: str = "/proc/net/netfilter/nfnetlink_queue"
) -> QueueStats | None:
    """The kernel's counters of one queue in the caller's network namespace, or None."""
    try:
        with open(path) as f:
            for line in f:
                v = line.split()
                if len(v) >= 8 and int(v[0]) == queue:
                    return QueueStats(queue, int(v[1]), int(v[2]), int(v[5]), int(v[6]), int(v[7]))
    except (OSError, ValueError):
        return None
    return None


class Queue:
    """One bound NFQUEUE.

    ``callback(pkt)`` gets netfilterqueue Packets and must give each a verdict
    (``pkt.accept()``, ``pkt.drop()``, optionally ``pkt.set_mark()`` first).
    """

    def __init__(
        self,
        num: int,
        callback: Callable[[Any], None],
        *,
        max_len: int = 65536,
        rcvbuf: int = 128 * 1024 * 1024,
        fail_open: bool = False,
        gso: bool = False,
    ) -> None:
        import warnings

        from netfilterqueue import NetfilterQueue

        self.num = num
        self._q = NetfilterQueue()
        copy_range = GSO_COPY_RANGE if gso else MAX_COPY_RANGE
        with warnings.catch_warnings():
            # "Socket rcvbuf limit is now N": net.core.rmem_max caps it; we force it below.
            warnings.simplefilter("ignore", RuntimeWarning)
            self._q.bind(num, callback, max_len=max_len, range=copy_range, sock_len=rcvbuf // 2)
        self.fd: int = self._q.get_fd()
        self._force_rcvbuf(rcvbuf)
        flags = (NFQA_CFG_F_FAIL_OPEN if fail_open else 0) | (NFQA_CFG_F_GSO if gso else 0)
        self._set_flags(flags, NFQA_CFG_F_FAIL_OPEN | NFQA_CFG_F_GSO)
        self.flags = flags

    def _socket(self) -> socket.socket:
        return socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER, fileno=os.dup(self.fd)
        )

    def _force_rcvbuf(self, size: int) -> None:
        s = self._socket()
        try:
            s.setsockopt(socket.SOL_SOCKET, 33, size)  # SO_RCVBUFFORCE: root may pass rmem_max
        except OSError:
            pass
        finally:
            s.close()

    def _set_flags(self, flags: int, mask: int) -> None:
        s = self._socket()
        try:
            s.settimeout(2.0)
            s.send(config_flags_message(self.num, flags, mask))
            while True:  # only the ACK can be waiting: no packet is queued before the rules
                data = s.recv(65536)
                if len(data) < 20:
                    continue
                _, mtype, _, _, _ = _NLMSGHDR.unpack_from(data)
                if mtype == NLMSG_ERROR:
                    err = struct.unpack_from("=i", data, 16)[0]
                    if err:
                        raise OSError(
                            -err, f"NFQUEUE {self.num}: setting flags: {os.strerror(-err)}"
                        )
                    return
        finally:
            s.close()

    def drain(self) -> None:
        """Handle every packet that is waiting, without blocking (callback per packet)."""
        self._q.run(block=False)

    def close(self) -> None:
        # unbinding a queue whose netns is going away must not mask the exit
        with contextlib.suppress(Exception):
            self._q.unbind()
