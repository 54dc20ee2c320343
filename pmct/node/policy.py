"""The node's filter: an ordered ruleset over the engine's verdict, like an iptables chain.

An admin writes what they would write with iptables, e.g.
``-m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT``: the engine answers "what is this packet
to the connection table" (ctstate, direction), and the ruleset answers "what do we do with it".
The first rule whose every given field matches decides; no rule matching means the default
policy (iptables: the chain policy).

Rules:
1. PURE: no I/O, no clock, no sockets. The daemon hands in the ctstate, the direction, the input
   interface name, the IP datagram and (only when a rule asks for it) a function that names the
   output interface of a destination; this module never looks at the routing table itself.
2. A field that is not given matches everything. Lists inside a field are alternatives
   (``ctstate = ["established", "related"]`` is ESTABLISHED *or* RELATED).
3. Cheap fields first: ctstate, direction and interfaces are compared before the datagram's
   header is decoded, and the header is decoded at most once per packet, lazily.
4. Port and SYN matches imply their protocol (as iptables requires ``-p tcp`` before
   ``--dport``): a rule with ``dport`` never matches ICMP.

The ctstate can also be exported as the packet mark (``ctstate_mark``), using the bit values of
nftables' ``ct state`` (include/uapi/linux/netfilter/nf_conntrack_common.h: NF_CT_STATE_BIT(),
INVALID = 1, ESTABLISHED = 2, RELATED = 4, NEW = 8, UNTRACKED = 64), so an admin who keeps the
filter in nftables can write ``meta mark & 0x4f == 0x2 accept``.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import IntEnum
from typing import Final

from pmct.conntrack.constants import CtState

__all__ = [
    "ACTION_BY_NAME",
    "CTSTATE_BY_NAME",
    "CTSTATE_MARK_BITS",
    "DIRECTION_BY_NAME",
    "PORT_PROTOS",
    "PROTO_BY_NAME",
    "Action",
    "Fields",
    "Net",
    "Rule",
    "Ruleset",
    "ctstate_mark",
    "describe",
    "packet_fields",
    "parse_net",
]


class Action(IntEnum):
    """What happens to a packet. REJECT = dropped with a TCP RST / ICMP unreachable."""

    DROP = 0
    ACCEPT = 1
    REJECT = 2


ACTION_BY_NAME: Final = {"drop": Action.DROP, "accept": Action.ACCEPT, "reject": Action.REJECT}

# Policy names of the engine's ctstates. "fragment" is a fragment the engine holds for
# reassembly (CtState.HELD); it is only seen when kernel defrag is off (netfilter.py turns it
# on with its PMCT_DEFRAG chain, so only on a kernel without xt_socket). A datagram ip_rcv()
# would have discarded (CtState.DROPPED) counts as "invalid".
CTSTATE_BY_NAME: Final = {
    "invalid": (int(CtState.INVALID), int(CtState.DROPPED)),
    "new": (int(CtState.NEW),),
    "established": (int(CtState.ESTABLISHED),),
    "related": (int(CtState.RELATED),),
    "untracked": (int(CtState.UNTRACKED),),
    "fragment": (int(CtState.HELD),),
}

# nft ct state bits, indexed by CtState value (HELD: no bit; DROPPED: invalid).
CTSTATE_MARK_BITS: Final = (1, 8, 2, 4, 64, 0, 1)

PROTO_BY_NAME: Final = {
    "icmp": 1,
    "tcp": 6,
    "udp": 17,
    "dccp": 33,
    "gre": 47,
    "icmpv6": 58,
    "ipv6-icmp": 58,
    "sctp": 132,
    "udplite": 136,
}
PORT_PROTOS: Final = frozenset({6, 17, 33, 132, 136})

DIRECTION_BY_NAME: Final = {"original": 0, "reply": 1}

# TCP flags iptables' --syn looks at: SYN set, RST/ACK/FIN clear.
_TCP_SYN_MASK: Final = 0x17
_TCP_SYN: Final = 0x02

_V4: Final = struct.Struct("!9xB2x4s4s")  # protocol, src, dst
_V6: Final = struct.Struct("!6xB1x16s16s")  # next header, src, dst
_PORTS: Final = struct.Struct("!HH")
# IPv6 extension headers walked to find the transport header (RFC 8200 section 4).
_V6_EXT: Final = frozenset({0, 43, 60, 135, 139, 140})
_V6_FRAG: Final = 44
_V6_AH: Final = 51


def ctstate_mark(ctstate: int) -> int:
    """The nft ``ct state`` bit of an engine ctstate (0 for a held fragment)."""
    return CTSTATE_MARK_BITS[ctstate]


@dataclass(frozen=True, slots=True)
class Net:
    """An address prefix: family 4/6, network as int, mask as int."""

    l3: int
    net: int
    mask: int

    def contains(self, l3: int, addr: int) -> bool:
        return l3 == self.l3 and addr & self.mask == self.net

    def __str__(self) -> str:
        bits = 32 if self.l3 == 4 else 128
        plen = bits - (((1 << bits) - 1) ^ self.mask).bit_length()
        ip = ipaddress.ip_address(self.net) if self.l3 == 4 else ipaddress.IPv6Address(self.net)
        return f"{ip}/{plen}"


def parse_net(text: str) -> Net:
    """``"198.18.0.0/15"``, ``"2001:db8::/32"`` or a bare address; raises ValueError."""
    n = ipaddress.ip_network(text, strict=False)
    return Net(n.version, int(n.network_address), int(n.netmask))


# Decoded header of one datagram: (l3, proto, src int, dst int, sport, dport, tcp flags).
# sport/dport are -1 for a protocol without ports or a truncated header; flags -1 unless TCP.
Fields = tuple[int, int, int, int, int, int, int]

_NO_FIELDS: Final[Fields] = (0, -1, 0, 0, -1, -1, -1)
_from_bytes: Final = int.from_bytes


def packet_fields(data: bytes) -> Fields:
    """Decode the header fields rules can match on; total on any input (garbage gives l3 0)."""
    n = len(data)
    if n < 20:
        return _NO_FIELDS
    ver = data[0] >> 4
    if ver == 4:
        proto, src, dst = _V4.unpack_from(data)
        off = (data[0] & 15) << 2
        if data[6] & 0x1F or data[7]:  # a non-first fragment has no transport header
            return (4, proto, _from_bytes(src, "big"), _from_bytes(dst, "big"), -1, -1, -1)
        l3 = 4
    elif ver == 6 and n >= 40:
        proto, src, dst = _V6.unpack_from(data)
        off = 40
        while proto in _V6_EXT or proto in (_V6_FRAG, _V6_AH):
            if off + 8 > n:
                break
            if proto == _V6_FRAG:
                if _PORTS.unpack_from(data, off + 2)[0] & 0xFFF8:  # offset != 0
                    return (6, 44, _from_bytes(src, "big"), _from_bytes(dst, "big"), -1, -1, -1)
                nxt, size = data[off], 8
            elif proto == _V6_AH:
                nxt, size = data[off], (data[off + 1] + 2) << 2
            else:
                nxt, size = data[off], (data[off + 1] + 1) << 3
            proto = nxt
            off += size
        l3 = 6
    else:
        return _NO_FIELDS
    s = _from_bytes(src, "big")
    d = _from_bytes(dst, "big")
    if proto in PORT_PROTOS and off + 4 <= n:
        sport, dport = _PORTS.unpack_from(data, off)
        flags = data[off + 13] if proto == 6 and off + 14 <= n else -1
        return (l3, proto, s, d, sport, dport, flags)
    return (l3, proto, s, d, -1, -1, -1)


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule. ``None`` (or an empty tuple for ``ctstates``) means "any".

    Attributes:
        action: what to do with a matching packet.
        ctstates: engine CtState values (see CTSTATE_BY_NAME for the names).
        direction: 0 original, 1 reply; a packet without a connection never matches it.
        iif / oif: interface names.
        protos: IP protocol numbers.
        src / dst: prefixes (any of them).
        sports / dports: inclusive port ranges (any of them); imply a port protocol.
        syn: True = only a TCP SYN (iptables --syn); False = only TCP that is not a SYN.
        comment: free text, shown in ``pmct status``.
    """

    action: Action
    ctstates: tuple[int, ...] = ()
    direction: int | None = None
    iif: frozenset[str] | None = None
    oif: frozenset[str] | None = None
    protos: frozenset[int] | None = None
    src: tuple[Net, ...] | None = None
    dst: tuple[Net, ...] | None = None
    sports: tuple[tuple[int, int], ...] | None = None
    dports: tuple[tuple[int, int], ...] | None = None
    syn: bool | None = None
    comment: str = ""

    @property
    def needs_header(self) -> bool:
        return (
            self.protos is not None
            or self.src is not None
            or self.dst is not None
            or self.sports is not None
            or self.dports is not None
            or self.syn is not None
        )


def _ports_match(ranges: tuple[tuple[int, int], ...], port: int) -> bool:
    return any(lo <= port <= hi for lo, hi in ranges)


def _nets_match(nets: tuple[Net, ...], l3: int, addr: int) -> bool:
    return any(n.l3 == l3 and addr & n.mask == n.net for n in nets)


class Ruleset:
    """An ordered list of rules plus the default action.

    ``decide()`` is the per-packet entry point; ``hits`` counts matches per rule (the last
    slot is the default policy), like ``iptables -L -v``.
    """

    __slots__ = ("_compiled", "default", "hits", "needs_oif", "rules")

    def __init__(self, rules: Iterable[Rule] = (), default: Action = Action.DROP) -> None:
        self.rules: tuple[Rule, ...] = tuple(rules)
        self.default = Action(default)
        self.hits = [0] * (len(self.rules) + 1)
        self.needs_oif = any(r.oif is not None for r in self.rules)
        # Flattened per rule: (ctstate bitmask, direction or -1, iif, oif, needs header, rule,
        # action int); plain tuples so the loop does no attribute lookups on the common path.
        compiled = []
        for r in self.rules:
            mask = 0
            for st in r.ctstates:
                mask |= 1 << st
            compiled.append(
                (
                    mask or -1,
                    -1 if r.direction is None else r.direction,
                    r.iif,
                    r.oif,
                    r.needs_header,
                    r,
                    int(r.action),
                )
            )
        self._compiled = tuple(compiled)

    def decide(
        self,
        ctstate: int,
        direction: int,
        iif: str | None,
        data: bytes,
        oif: Callable[[int, int], str | None] | None = None,
    ) -> int:
        """Action (an int, Action value) for one packet.

        Args:
            ctstate: the engine's CtState value.
            direction: 0/1, or -1 when the packet has no connection.
            iif: name of the interface the packet came in on.
            data: the IP datagram (only read when a rule matches on header fields).
            oif: ``oif(l3, dst_int) -> interface name`` (a route lookup), asked only when a
                rule names an output interface; None means "unknown", which such a rule
                never matches.
        """
        bit = 1 << ctstate
        fields: Fields | None = None
        hits = self.hits
        i = 0
        for mask, rdir, riif, roif, needs_header, r, action in self._compiled:
            i += 1
            if not mask & bit:
                continue
            if rdir >= 0 and rdir != direction:
                continue
            if riif is not None and iif not in riif:
                continue
            if needs_header:
                if fields is None:
                    fields = packet_fields(data)
                if not _header_match(r, fields):
                    continue
            if roif is not None:
                if fields is None:
                    fields = packet_fields(data)
                name = oif(fields[0], fields[3]) if oif is not None and fields[0] else None
                if name not in roif:
                    continue
            hits[i - 1] += 1
            return action
        hits[-1] += 1
        return int(self.default)


def _header_match(r: Rule, f: Fields) -> bool:
    l3, proto, src, dst, sport, dport, flags = f
    if r.protos is not None and proto not in r.protos:
        return False
    if r.src is not None and not _nets_match(r.src, l3, src):
        return False
    if r.dst is not None and not _nets_match(r.dst, l3, dst):
        return False
    if r.sports is not None and (sport < 0 or not _ports_match(r.sports, sport)):
        return False
    if r.dports is not None and (dport < 0 or not _ports_match(r.dports, dport)):
        return False
    if r.syn is not None:
        if flags < 0:
            return False
        if ((flags & _TCP_SYN_MASK) == _TCP_SYN) != r.syn:
            return False
    return True


def describe(rule: Rule) -> str:
    """A rule as one iptables-like line (for ``pmct status`` and logs)."""
    parts: list[str] = []
    names = {v: k for k, vs in CTSTATE_BY_NAME.items() for v in vs}
    if rule.ctstates:
        seen: list[str] = []
        for st in rule.ctstates:
            n = names[st]
            if n not in seen:
                seen.append(n)
        parts.append("ctstate " + ",".join(seen))
    if rule.direction is not None:
        parts.append("dir " + ("original" if rule.direction == 0 else "reply"))
    if rule.iif is not None:
        parts.append("in " + ",".join(sorted(rule.iif)))
    if rule.oif is not None:
        parts.append("out " + ",".join(sorted(rule.oif)))
    if rule.protos is not None:
        pn = {v: k for k, v in PROTO_BY_NAME.items() if k != "ipv6-icmp"}
        parts.append("proto " + ",".join(pn.get(p, str(p)) for p in sorted(rule.protos)))
    if rule.src is not None:
        parts.append("src " + ",".join(str(n) for n in rule.src))
    if rule.dst is not None:
        parts.append("dst " + ",".join(str(n) for n in rule.dst))
    for label, ranges in (("sport", rule.sports), ("dport", rule.dports)):
        if ranges is not None:
            parts.append(
                label + " " + ",".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in ranges)
            )
    if rule.syn is not None:
        parts.append("syn" if rule.syn else "!syn")
    parts.append("-> " + rule.action.name.lower())
    if rule.comment:
        parts.append(f"# {rule.comment}")
    return " ".join(parts)
