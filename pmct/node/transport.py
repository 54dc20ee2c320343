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
4. Datagrams fit the interface (``max_payload``: its MTU minus the IPv4/IPv6 and UDP headers,
   1472 / 1452 bytes at MTU 1500), so ct_sync never relies on IP fragmentation, which IPv6
   routers do not do and which loses a whole datagram with any one fragment.

IPv6 (RFC 4007 scopes): a link-local peer (``fe80::/10``) or a group of interface-local or
link-local scope (``ff01::/16``, ``ff02::/16``) is only meaningful together with an interface;
the scope is always the sync interface (its index goes into every destination's ``scope_id``,
and the group is joined there). An address written with a zone (``fe80::2%sync0``) must name
the sync interface. Wider multicast scopes (site ``ff05::``, organisation ``ff08::``) are
joined on the sync interface as well, with hop limit 1: ct_sync never leaves its link.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
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
_IPV6_MULTICAST_ALL: Final = 29  # linux/in6.h
_SIOCGIFMTU: Final = 0x8921  # linux/sockios.h
JUMBO_PAYLOAD: Final = 9000 - 28  # largest datagram used even on lo (MTU 65536): bounds the backlog
MIN_PAYLOAD: Final = 576  # what SyncConfig.max_datagram accepts at least
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


def _address(text: str, iface: str) -> _Addr:
    """A peer or group address; a zone (``%name`` or ``%index``) must be the sync interface."""
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise TransportError(f"sync: {text!r} is not an IP address") from None
    if isinstance(addr, ipaddress.IPv6Address) and addr.scope_id is not None:
        zone = addr.scope_id
        try:
            same = zone == iface or int(zone) == socket.if_nametoindex(iface)
        except (ValueError, OSError):
            same = False
        if not same:
            raise TransportError(
                f"sync: {text} is scoped to {zone!r}, not the sync interface {iface!r}"
            )
        addr = ipaddress.IPv6Address(text.split("%", 1)[0])
    return addr


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
        addrs = [_address(p, iface) for p in peers]
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
        self.ifindex = ifindex
        self.dests: list[tuple[str, int] | tuple[str, int, int, int]]
        if self.v6:
            # every destination is scoped to the sync interface (a global one ignores it)
            self.dests = [(str(a), port, 0, ifindex) for a in addrs]
        else:
            self.dests = [(str(a), port) for a in addrs]
        self.max_payload = self._max_payload()

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
            with contextlib.suppress(OSError):  # Linux >= 4.20
                s.setsockopt(socket.IPPROTO_IPV6, _IPV6_MULTICAST_ALL, 0)
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

    def _max_payload(self) -> int:
        """The largest UDP payload that leaves the sync interface unfragmented (rule 4)."""
        try:
            ifr = fcntl.ioctl(
                self.sock.fileno(), _SIOCGIFMTU, struct.pack("16si", self.iface.encode(), 0)
            )
            mtu = struct.unpack("16si", ifr)[1]
        except OSError:
            mtu = 1500
        payload = mtu - (40 if self.v6 else 20) - 8
        return max(MIN_PAYLOAD, min(payload, JUMBO_PAYLOAD))

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
