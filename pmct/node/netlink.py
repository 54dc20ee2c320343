"""Links, addresses, MACs, sysctls and neighbour announcements (pyroute2 + AF_PACKET).

Owns the node's changes to its interfaces. Every change is recorded with its inverse, and
``undo_all()`` puts the host back the way it was found, in reverse order: the daemon calls it
on exit, so a stopped pmct leaves no cluster address or MAC behind (a passive node that kept
the cluster MAC/IP after its silence rules are gone would answer ARP next to the active one).

Rules:
1. Change only what differs: an interface that is already promiscuous, an address that is
   already there, a sysctl that already has the value are left alone and not undone later.
2. Cluster addresses are added with IFA_F_NODAD: both nodes carry them by design, and
   duplicate address detection would otherwise declare the IPv6 ones "dadfailed".
3. Gratuitous ARP (RFC 5227 section 3 "ARP Announcement": a request with sender = target =
   the address) and unsolicited neighbour advertisements (RFC 4861 section 7.2.6, Override
   set) are written as raw frames on an AF_PACKET socket, so they leave from the cluster MAC
   on exactly the interface they are about.
4. A multicast cluster MAC (``cluster.mode = "multicast-mac"``) is not an interface address
   (the kernel refuses one): ``set_mac`` with a multicast MAC *joins* it instead, keeping the
   interface's own MAC: SIOCADDMULTI (what ``ip maddr add`` does) plus netfilter.py's
   ClusterMac rules (accept it as PACKET_HOST, name it in outgoing ARP). Announcements then
   leave from the own MAC with the cluster MAC as the ARP sender hardware address.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import ipaddress
import logging
import socket
import struct
import time
from collections.abc import Callable
from typing import Any, Final

__all__ = ["LinkError", "Links", "arp_announcement", "unsolicited_na"]

log = logging.getLogger("pmct.netlink")

IFF_UP: Final = 0x1
IFF_PROMISC: Final = 0x100
IFA_F_NODAD: Final = 0x02
ETH_P_ARP: Final = 0x0806
ETH_P_IPV6: Final = 0x86DD
SIOCADDMULTI: Final = 0x8931
SIOCDELMULTI: Final = 0x8932
_IFREQ_HWADDR: Final = struct.Struct("16sH14s8x")  # struct ifreq, ifr_hwaddr member (40 bytes)


class LinkError(RuntimeError):
    """An interface is missing or could not be changed."""


def _mac_bytes(mac: str) -> bytes:
    return bytes(int(x, 16) for x in mac.split(":"))


def is_multicast_mac(mac: str) -> bool:
    return bool(int(mac[:2], 16) & 1)


def arp_announcement(mac: str, ip: str, eth_src: str | None = None) -> bytes:
    """Ethernet frame: broadcast ARP request "who-has IP tell IP" from MAC (gratuitous ARP).

    ``eth_src``: the Ethernet source when it differs from the ARP sender hardware address
    (a multicast cluster MAC is never an Ethernet source).
    """
    m = _mac_bytes(mac)
    a = socket.inet_aton(ip)
    eth = b"\xff" * 6 + _mac_bytes(eth_src or mac) + struct.pack("!H", ETH_P_ARP)
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + m + a + b"\0" * 6 + a
    return eth + arp


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def unsolicited_na(mac: str, ip6: str, *, router: bool = True) -> bytes:
    """Ethernet frame: unsolicited neighbour advertisement for ip6 to all-nodes (ff02::1)."""
    m = _mac_bytes(mac)
    src = socket.inet_pton(socket.AF_INET6, ip6)
    dst = socket.inet_pton(socket.AF_INET6, "ff02::1")
    flags = (0x80000000 if router else 0) | 0x20000000  # R, O (not S: unsolicited)
    body = struct.pack("!BBHI", 136, 0, 0, flags) + src + bytes((2, 1)) + m
    pseudo = src + dst + struct.pack("!I3xB", len(body), 58)
    body = body[:2] + struct.pack("!H", _csum(pseudo + body)) + body[4:]
    ip = struct.pack("!IHBB", 6 << 28, len(body), 58, 255) + src + dst
    eth = b"\x33\x33\x00\x00\x00\x01" + m + struct.pack("!H", ETH_P_IPV6)
    return eth + ip + body


class Links:
    """The node's view of its interfaces, with an undo log."""

    def __init__(self, names: dict[int, str] | None = None) -> None:
        """``names`` (ifindex -> name) is kept up to date in place; pass a dict to share it."""
        from pyroute2 import IPRoute

        self.ipr: Any = IPRoute()
        self._undo: list[tuple[str, Callable[[], None]]] = []
        self._routes: dict[tuple[int, int], str | None] = {}
        self._routes_at = 0.0
        self.names: dict[int, str] = {} if names is None else names
        self.refresh_names()

    # ------------------------------------------------------------------ lookups

    def refresh_names(self) -> dict[int, str]:
        # Updated in place: the packet callback holds a reference to this dict.
        fresh = {link["index"]: link.get("ifname") for link in self.ipr.get_links()}
        self.names.clear()
        self.names.update(fresh)
        return self.names

    def index(self, name: str) -> int:
        found = self.ipr.link_lookup(ifname=name)
        if not found:
            raise LinkError(f"no interface {name!r} in this network namespace")
        return int(found[0])

    def _link(self, name: str) -> Any:
        return self.ipr.get_links(self.index(name))[0]

    def mac(self, name: str) -> str:
        return str(self._link(name).get("address"))

    def is_up(self, name: str) -> bool:
        return bool(self._link(name)["flags"] & IFF_UP)

    def route_oif(self, l3: int, dst: int) -> str | None:
        """Name of the interface the main routing table sends ``dst`` out of (cached 5 s)."""
        now = time.monotonic()
        if now - self._routes_at > 5.0 or len(self._routes) > 65536:
            self._routes.clear()
            self._routes_at = now
        key = (l3, dst)
        try:
            return self._routes[key]
        except KeyError:
            pass
        name = None
        try:
            addr = str(ipaddress.IPv4Address(dst) if l3 == 4 else ipaddress.IPv6Address(dst))
            for msg in self.ipr.route("get", dst=addr):
                oif = msg.get("RTA_OIF") or msg.get("oif")
                if oif:
                    name = self.names.get(oif) or self.refresh_names().get(oif)
                    break
        except Exception:  # no route: the rule simply does not match
            name = None
        self._routes[key] = name
        return name

    # ------------------------------------------------------------------ changes

    def _record(self, what: str, undo: Callable[[], None]) -> None:
        self._undo.append((what, undo))
        log.info("%s", what)

    def set_promisc(self, name: str) -> None:
        idx = self.index(name)
        if self._link(name)["flags"] & IFF_PROMISC:
            return
        self.ipr.link("set", index=idx, flags=IFF_PROMISC, change=IFF_PROMISC)
        self._record(
            f"{name}: promiscuous on",
            lambda: self.ipr.link("set", index=self.index(name), flags=0, change=IFF_PROMISC),
        )

    def set_mac(self, name: str, mac: str) -> None:
        """Wear ``mac`` on ``name``; a multicast MAC is joined instead (rule 4)."""
        if is_multicast_mac(mac):
            self.join_cluster_mac(name, mac)
            return
        old = self.mac(name).lower()
        if old == mac.lower():
            return
        self._set_mac(name, mac)
        self._record(f"{name}: MAC {old} -> {mac}", lambda: self._set_mac(name, old))

    def _set_mac(self, name: str, mac: str) -> None:
        idx = self.index(name)
        try:
            self.ipr.link("set", index=idx, address=mac)
        except Exception as e:  # a driver without live MAC change: down, change, up
            if getattr(e, "code", None) != errno.EBUSY:
                raise
            up = self.is_up(name)
            self.ipr.link("set", index=idx, state="down")
            self.ipr.link("set", index=idx, address=mac)
            if up:
                self.ipr.link("set", index=idx, state="up")

    def join_cluster_mac(self, name: str, mac: str) -> None:
        """Receive frames to the multicast ``mac`` as our own, and name it in our ARP."""
        from pmct.node.netfilter import ClusterMac

        self.index(name)  # LinkError for a missing interface
        if not self._has_maddr(name, mac):
            self._maddr(SIOCADDMULTI, name, mac)
            self._record(
                f"{name}: joined multicast MAC {mac}",
                lambda: self._maddr(SIOCDELMULTI, name, mac),
            )
        rules = ClusterMac(name, mac)
        rules.install()
        self._record(f"{name}: cluster MAC {mac} rules ({rules.table})", rules.remove)

    @staticmethod
    def _maddr(request: int, name: str, mac: str) -> None:
        ifr = _IFREQ_HWADDR.pack(name.encode(), socket.AF_UNSPEC, _mac_bytes(mac))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                fcntl.ioctl(s.fileno(), request, ifr)
            except OSError as e:
                raise LinkError(f"{name}: multicast MAC {mac}: {e.strerror}") from e

    @staticmethod
    def _has_maddr(name: str, mac: str) -> bool:
        """Is ``mac`` already a global (``ip maddr add``) address of ``name``?"""
        want = mac.replace(":", "").lower()
        try:
            with open("/proc/net/dev_mcast") as f:
                for line in f:  # ifindex name users global address
                    parts = line.split()
                    if len(parts) == 5 and parts[1] == name and parts[4] == want:
                        return parts[3] != "0"
        except OSError:
            pass
        return False

    def add_address(self, name: str, cidr: str) -> None:
        iface = ipaddress.ip_interface(cidr)
        idx = self.index(name)
        family = socket.AF_INET if iface.version == 4 else socket.AF_INET6
        addr = str(iface.ip)
        plen = iface.network.prefixlen
        try:
            if family == socket.AF_INET6:
                self.ipr.addr("add", index=idx, address=addr, prefixlen=plen, flags=IFA_F_NODAD)
            else:
                self.ipr.addr("add", index=idx, address=addr, prefixlen=plen)
        except Exception as e:
            if getattr(e, "code", None) == errno.EEXIST:
                return
            raise LinkError(f"{name}: adding {cidr}: {e}") from e

        def undo() -> None:
            self.ipr.addr("del", index=self.index(name), address=addr, prefixlen=plen)

        self._record(f"{name}: address {cidr} added", undo)

    def set_sysctl(self, path: str, value: str) -> None:
        """Write /proc/sys/<path> (dots or slashes), remembering the old value."""
        p = "/proc/sys/" + path.replace(".", "/") if "/" not in path else path
        try:
            with open(p) as f:
                old = f.read().strip()
        except OSError as e:
            raise LinkError(f"sysctl {path}: {e.strerror}") from e
        if old == value:
            return
        self.write_sysctl(p, value)
        self._record(f"sysctl {path} = {value} (was {old})", lambda: self.write_sysctl(p, old))

    @staticmethod
    def write_sysctl(path: str, value: str) -> None:
        with open(path, "w") as f:
            f.write(value)

    def undo_all(self) -> None:
        """Revert every recorded change, newest first; errors are logged, not raised."""
        while self._undo:
            what, undo = self._undo.pop()
            try:
                undo()
                log.info("undone: %s", what)
            except Exception as e:
                log.warning("could not undo %s: %s", what, e)

    # ------------------------------------------------------------------ announcements

    def announce(self, name: str, mac: str, cidrs: tuple[str, ...], count: int = 1) -> int:
        """Gratuitous ARP / unsolicited NA for each address; returns frames sent."""
        sent = 0
        # A multicast cluster MAC goes into the ARP sender field only; the frame leaves from
        # the interface's own MAC (rule 4). IPv6 is refused for that mode by config.py.
        eth_src = self.mac(name) if is_multicast_mac(mac) else None
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
            s.bind((name, 0))
            for _ in range(count):
                for cidr in cidrs:
                    ip = ipaddress.ip_interface(cidr).ip
                    if ip.version == 4:
                        frame = arp_announcement(mac, str(ip), eth_src)
                    elif eth_src is None:
                        frame = unsolicited_na(mac, str(ip))
                    else:
                        continue
                    try:
                        s.send(frame)
                        sent += 1
                    except OSError as e:
                        log.warning("%s: announcing %s: %s", name, ip, e)
        return sent

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ipr.close()
