"""The ct_sync transport: one UDP socket on the sync interface, unicast or multicast.

(conntrackd ``struct channel_ops``: channel_udp.c and channel_mcast.c, one socket each way.)
This shell owns exactly one resource, the socket; it has no protocol logic: it moves whole
datagrams between the wire and pmct.sync.SyncProtocol, which authenticates, orders and
decides. Nothing here looks inside a datagram.

* unicast: bound to ``port`` on the sync interface (SO_BINDTODEVICE), sends to the peer's
  address(es). The peer is named by address, the sync core accepts it by node id and key.
* multicast: bound to the group's port on the sync interface, joined to the group there
  (IP_ADD_MEMBERSHIP / IPV6_JOIN_GROUP by interface index), sends to the group with TTL /
  hop limit 1 and loopback off, so a node never hears itself (the core would count its own
  echo as ``own_node`` anyway).

The sync interface is never queued and never silenced (netfilter.py installs rules on the
data interfaces only), so ct_sync works on the passive node as on the active one.

Rules:
1. Never raises on the hot path: a failed send (ENOBUFS, EAGAIN, a peer that is down:
   ECONNREFUSED, EHOSTUNREACH) is counted in ``tx_errors`` and the datagram is gone; the sync
   core's NACK / retry logic repairs the loss, exactly as for a datagram lost on the wire.
2. Receive is non-blocking and bounded per call (``recv_many(limit)``), so a flood on the sync
   link cannot starve the packet loop.
3. Buffers are large (SO_RCVBUFFORCE / SO_SNDBUFFORCE as root): an unthrottled init sync keeps
   up to half the backlog (512 datagrams, ~750 KB) in flight.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import socket
import struct
from collections.abc import Sequence
from typing import Final

__all__ = ["DEFAULT_PORT", "SyncTransport", "TransportError"]

DEFAULT_PORT: Final = 3780  # conntrackd's multicast example port
BUFFER: Final = 8 * 1024 * 1024
MAX_DATAGRAM: Final = 65535
_SO_BINDTODEVICE: Final = getattr(socket, "SO_BINDTODEVICE", 25)
_SO_RCVBUFFORCE: Final = getattr(socket, "SO_RCVBUFFORCE", 33)
_SO_SNDBUFFORCE: Final = getattr(socket, "SO_SNDBUFFORCE", 32)
_IP_MULTICAST_ALL: Final = 49  # linux/in.h; not in the socket module
# Send errors that mean "this datagram is lost", not "the transport is broken".
_LOST: Final = frozenset(
    {
        errno.EAGAIN,
        errno.ENOBUFS,
        errno.ECONNREFUSED,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.ENETDOWN,
        errno.EHOSTDOWN,
        errno.EPERM,  # a local firewall rule dropped it
    }
)


_Addr = ipaddress.IPv4Address | ipaddress.IPv6Address


class TransportError(RuntimeError):
    """The sync socket cannot be set up (the message names the interface and address)."""


class SyncTransport:
    """One UDP socket for ct_sync on ``iface``.

    Args:
        iface: the sync interface (must exist).
        peers: unicast: the peer addresses to send to; multicast: exactly one group address.
        port: UDP port, the same on every node.
        multicast: join ``peers[0]`` as a group instead of sending unicast.
    """

    def __init__(
        self, iface: str, peers: Sequence[str], port: int, *, multicast: bool = False
    ) -> None:
        if not peers:
            raise TransportError("sync: no peer address")
        addrs = [ipaddress.ip_address(p) for p in peers]
        fams = {a.version for a in addrs}
        if len(fams) != 1:
            raise TransportError("sync: peer addresses mix IPv4 and IPv6")
        self.v6 = fams == {6}
        self.iface = iface
        self.port = port
        self.multicast = multicast
        self.rx_packets = 0
        self.rx_bytes = 0
        self.tx_packets = 0
        self.tx_bytes = 0
        self.tx_errors = 0
        self.last_error = ""
        try:
            ifindex = socket.if_nametoindex(iface)
        except OSError:
            raise TransportError(f"sync interface {iface!r} does not exist") from None
        fam = socket.AF_INET6 if self.v6 else socket.AF_INET
        self.sock = socket.socket(fam, socket.SOCK_DGRAM)
        try:
            self._setup(addrs, ifindex)
        except OSError as e:
            self.sock.close()
            raise TransportError(f"sync socket on {iface} port {port}: {e.strerror or e}") from e
        self.sock.setblocking(False)
        self.dests: list[tuple[str, int] | tuple[str, int, int, int]]
        if self.v6:
            self.dests = [(str(a), port, 0, ifindex if a.is_link_local else 0) for a in addrs]
        else:
            self.dests = [(str(a), port) for a in addrs]
        if multicast and self.v6:
            self.dests = [(str(addrs[0]), port, 0, ifindex)]

    def _setup(self, addrs: list[_Addr], ifindex: int) -> None:
        s = self.sock
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, _SO_BINDTODEVICE, self.iface.encode())
        for opt, fallback in (
            (_SO_RCVBUFFORCE, socket.SO_RCVBUF),
            (_SO_SNDBUFFORCE, socket.SO_SNDBUF),
        ):
            try:
                s.setsockopt(socket.SOL_SOCKET, opt, BUFFER)
            except OSError:  # not root: as much as net.core.[rw]mem_max allows
                s.setsockopt(socket.SOL_SOCKET, fallback, BUFFER)
        if not self.multicast:
            s.bind(("::" if self.v6 else "0.0.0.0", self.port))
            return
        group = addrs[0]
        if len(addrs) != 1 or not group.is_multicast:
            raise TransportError(f"sync: multicast needs one group address, not {addrs}")
        if self.v6:
            s.bind((str(group), self.port, 0, ifindex))
            mreq = group.packed + struct.pack("@I", ifindex)
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq)
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, ifindex)
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 1)
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
        else:
            s.bind((str(group), self.port))
            mreqn = group.packed + bytes(4) + struct.pack("@i", ifindex)  # struct ip_mreqn
            s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreqn)
            s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, mreqn)
            s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
            s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
            # only this group, not every group some other socket of the host joined
            with contextlib.suppress(OSError):
                s.setsockopt(socket.IPPROTO_IP, _IP_MULTICAST_ALL, 0)

    def fileno(self) -> int:
        return self.sock.fileno()

    def recv_many(self, limit: int = 256) -> list[bytes]:
        """Up to ``limit`` datagrams that are waiting (none: an empty list). Never blocks."""
        out: list[bytes] = []
        recv = self.sock.recv
        for _ in range(limit):
            try:
                data = recv(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:  # e.g. a queued ICMP error (ECONNREFUSED): nothing to read
                self.last_error = f"recv: {e.strerror or e}"
                continue
            out.append(data)
            self.rx_bytes += len(data)
        self.rx_packets += len(out)
        return out

    def send(self, data: bytes) -> None:
        """Send one datagram to every destination; a failure only counts (rule 1)."""
        sendto = self.sock.sendto
        for dest in self.dests:
            try:
                sendto(data, dest)
            except OSError as e:
                if e.errno not in _LOST:
                    self.last_error = f"send: {e.strerror or e}"
                self.tx_errors += 1
                continue
            self.tx_packets += 1
            self.tx_bytes += len(data)

    def stats(self) -> dict[str, int]:
        return {
            "rx_packets": self.rx_packets,
            "rx_bytes": self.rx_bytes,
            "tx_packets": self.tx_packets,
            "tx_bytes": self.tx_bytes,
            "tx_errors": self.tx_errors,
        }

    def close(self) -> None:
        self.sock.close()
