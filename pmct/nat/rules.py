"""NAT rules: source NAT / masquerade and destination NAT (port forwarding), as frozen data.

Why a separate rule model (not the filter policy's): a NAT rule is consulted once per NEW
connection, never per packet, and what it produces is a tuple range (kernel struct
nf_nat_range2: address range + port range), not a verdict. Like the kernel's nat chains, DNAT
rules (kernel NF_INET_PRE_ROUTING) are matched against the original tuple and SNAT rules
(NF_INET_POST_ROUTING) against the tuple after DNAT; the first matching rule of each kind wins.

The engine sees IP datagrams only, so rules match on addresses, protocol and ports rather than
interfaces. Masquerade ("SNAT to whatever the WAN interface's address is") is an SNAT rule whose
address the node fills in from the interface (``NatConfig.resolve``); the cores never look up
an interface.

Config section (TOML, read by pmct/config.py into ``parse_nat``)::

    [nat]
    seed = "any string shared by both nodes"   # optional: keys the allocator's hash

    [[nat.snat]]
    src = ["10.0.0.0/24"]          # required: who is NATed
    not_dst = ["10.0.0.0/8"]       # optional: destinations that are not
    to = "198.18.1.1"              # or: masquerade = "wan0"
    ports = "1024-65535"           # optional; default: the kernel's (keep the port's class)
    proto = "tcp"                  # optional: tcp, udp, udplite, sctp, icmp, icmpv6

    [[nat.dnat]]                   # port forwarding
    dst = "198.18.1.1"             # the public address(es)
    proto = "tcp"                  # required
    dport = 80                     # or "8000-8010"
    to = "10.0.0.10"
    to_port = 8080                 # optional; a dport range maps onto to_port.. in order
    src = ["0.0.0.0/0"]            # optional: who may use the forward
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final

__all__ = [
    "NAT_PROTOS",
    "DnatRule",
    "NatConfig",
    "NatRuleError",
    "Prefix",
    "SnatRule",
    "parse_nat",
]

NAT_PROTOS: Final = {"tcp": 6, "udp": 17, "udplite": 136, "sctp": 132, "icmp": 1, "icmpv6": 58}
_PORTED: Final = frozenset({6, 17, 136, 132})


class NatRuleError(ValueError):
    """A bad NAT rule; ``path`` is the key path (``nat.snat[1].to``) for config.py's error."""

    def __init__(self, path: str, msg: str) -> None:
        super().__init__(f"{path}: {msg}")
        self.path = path
        self.msg = msg


@dataclass(frozen=True, slots=True)
class Prefix:
    """An address prefix over packed addresses (bytes of length 4 or 16)."""

    net: bytes
    plen: int

    @classmethod
    def parse(cls, text: str) -> Prefix:
        n = ipaddress.ip_network(text, strict=False)
        return cls(n.network_address.packed, n.prefixlen)

    def contains(self, addr: bytes) -> bool:
        if len(addr) != len(self.net):
            return False
        bits = 8 * len(addr)
        shift = bits - self.plen
        return int.from_bytes(addr, "big") >> shift == int.from_bytes(self.net, "big") >> shift

    def __str__(self) -> str:
        return f"{ipaddress.ip_address(self.net)}/{self.plen}"


def _any(prefixes: tuple[Prefix, ...], addr: bytes) -> bool:
    return any(p.contains(addr) for p in prefixes)


@dataclass(frozen=True, slots=True)
class SnatRule:
    """Source NAT: connections from ``src`` (not to ``not_dst``) leave from ``to``.

    ``to`` holds packed addresses; several spread the sources (kernel find_best_ips_proto()).
    An empty ``to`` with ``masquerade`` set is unresolved: it matches nothing until the node
    fills in the interface's address. ``ports`` (0, 0) means the kernel's default range.
    """

    src: tuple[Prefix, ...]
    to: tuple[bytes, ...] = ()
    not_dst: tuple[Prefix, ...] = ()
    proto: int = 0  # 0: any
    ports: tuple[int, int] = (0, 0)
    masquerade: str = ""  # interface name, for the node

    def matches(self, proto: int, src: bytes, dst: bytes) -> bool:
        if self.proto and proto != self.proto:
            return False
        if not any(len(a) == len(src) for a in self.to):
            return False
        return _any(self.src, src) and not _any(self.not_dst, dst)


@dataclass(frozen=True, slots=True)
class DnatRule:
    """Destination NAT (port forwarding): ``dst``:``dport`` .. goes to ``to``:``to_port`` ..

    A ``dport`` range maps in order onto ``to_port`` + (port - first); ``to_port`` 0 keeps
    the port (kernel NF_NAT_RANGE_PROTO_OFFSET semantics for ranges).
    """

    dst: tuple[Prefix, ...]
    proto: int
    to: bytes
    dports: tuple[int, int] = (0, 0)  # (0, 0): every port (then to_port must be 0)
    to_port: int = 0
    src: tuple[Prefix, ...] = ()  # empty: anyone

    def matches(self, proto: int, src: bytes, dst: bytes, dport: int) -> bool:
        if proto != self.proto or len(dst) != len(self.to) or not _any(self.dst, dst):
            return False
        lo, hi = self.dports
        if hi and not lo <= dport <= hi:
            return False
        return not self.src or _any(self.src, src)

    def target_port(self, dport: int) -> int:
        if not self.to_port or self.proto not in _PORTED:
            return dport
        return self.to_port + (dport - self.dports[0] if self.dports[1] else 0)


@dataclass(frozen=True, slots=True)
class NatConfig:
    snat: tuple[SnatRule, ...] = ()
    dnat: tuple[DnatRule, ...] = ()
    seed: bytes = b""

    @property
    def enabled(self) -> bool:
        return bool(self.snat or self.dnat)

    def resolve(self, addresses: Mapping[str, Sequence[bytes]]) -> NatConfig:
        """Fill masquerade rules with their interface's addresses (the node calls this at
        start and whenever an interface's address changes)."""
        snat = tuple(
            replace(r, to=tuple(addresses.get(r.masquerade, ()))) if r.masquerade else r
            for r in self.snat
        )
        return replace(self, snat=snat)


# ------------------------------------------------------------------ parsing


def _prefixes(v: Any, path: str) -> tuple[Prefix, ...]:
    items = v if isinstance(v, list) else [v]
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise NatRuleError(f"{path}[{i}]" if isinstance(v, list) else path, "not a string")
        try:
            out.append(Prefix.parse(item))
        except ValueError as e:
            raise NatRuleError(path, f"not an address or prefix: {item!r} ({e})") from None
    return tuple(out)


def _addr(v: Any, path: str) -> bytes:
    if not isinstance(v, str):
        raise NatRuleError(path, "not a string")
    try:
        return ipaddress.ip_address(v).packed
    except ValueError:
        raise NatRuleError(path, f"not an address: {v!r}") from None


def _port_range(v: Any, path: str, lo: int = 1) -> tuple[int, int]:
    if isinstance(v, bool):
        raise NatRuleError(path, "not a port")
    if isinstance(v, int):
        a = b = v
    elif (
        isinstance(v, str) and v.count("-") == 1 and all(p.strip().isdigit() for p in v.split("-"))
    ):
        a, b = (int(p) for p in v.split("-"))
    elif isinstance(v, str) and v.strip().isdigit():
        a = b = int(v)
    else:
        raise NatRuleError(path, f"not a port or range 'a-b': {v!r}")
    if not lo <= a <= b <= 65535:
        raise NatRuleError(path, f"port range {a}-{b} outside {lo}-65535 or reversed")
    return (a, b)


def _proto(v: Any, path: str) -> int:
    if not isinstance(v, str) or v not in NAT_PROTOS:
        raise NatRuleError(path, f"must be one of {', '.join(NAT_PROTOS)}")
    return NAT_PROTOS[v]


def _check_keys(d: Any, path: str, allowed: tuple[str, ...]) -> Mapping[str, Any]:
    if not isinstance(d, Mapping):
        raise NatRuleError(path, "must be a table")
    for k in d:
        if k not in allowed:
            raise NatRuleError(f"{path}.{k}", f"unknown key; known keys: {', '.join(allowed)}")
    return d


def _snat(d: Any, path: str) -> SnatRule:
    d = _check_keys(d, path, ("src", "not_dst", "to", "masquerade", "ports", "proto"))
    if "src" not in d:
        raise NatRuleError(f"{path}.src", "required")
    if ("to" in d) == ("masquerade" in d):
        raise NatRuleError(f"{path}.to", "give exactly one of 'to' and 'masquerade'")
    to: tuple[bytes, ...] = ()
    masq = ""
    if "to" in d:
        v = d["to"]
        items = v if isinstance(v, list) else [v]
        to = tuple(_addr(a, f"{path}.to") for a in items)
        if not to:
            raise NatRuleError(f"{path}.to", "empty")
    else:
        masq = d["masquerade"]
        if not isinstance(masq, str) or not masq:
            raise NatRuleError(f"{path}.masquerade", "must be an interface name")
    proto = _proto(d["proto"], f"{path}.proto") if "proto" in d else 0
    ports = (0, 0)
    if "ports" in d:
        if proto and proto not in _PORTED and proto not in (1, 58):
            raise NatRuleError(f"{path}.ports", "this protocol has no ports")
        ports = _port_range(d["ports"], f"{path}.ports", 0 if proto in (1, 58) else 1)
    return SnatRule(
        src=_prefixes(d["src"], f"{path}.src"),
        to=to,
        not_dst=_prefixes(d.get("not_dst", []), f"{path}.not_dst"),
        proto=proto,
        ports=ports,
        masquerade=masq,
    )


def _dnat(d: Any, path: str) -> DnatRule:
    d = _check_keys(d, path, ("dst", "proto", "dport", "to", "to_port", "src"))
    for k in ("dst", "proto", "to"):
        if k not in d:
            raise NatRuleError(f"{path}.{k}", "required")
    proto = _proto(d["proto"], f"{path}.proto")
    dports = (0, 0)
    to_port = 0
    if "dport" in d:
        if proto not in _PORTED:
            raise NatRuleError(f"{path}.dport", "this protocol has no ports")
        dports = _port_range(d["dport"], f"{path}.dport")
    if "to_port" in d:
        if not dports[1]:
            raise NatRuleError(f"{path}.to_port", "needs 'dport'")
        to_port = _port_range(d["to_port"], f"{path}.to_port")[0]
        if to_port + dports[1] - dports[0] > 65535:
            raise NatRuleError(f"{path}.to_port", "the mapped range runs past 65535")
    to = _addr(d["to"], f"{path}.to")
    dst = _prefixes(d["dst"], f"{path}.dst")
    if any(len(p.net) != len(to) for p in dst):
        raise NatRuleError(f"{path}.to", "address family differs from 'dst'")
    return DnatRule(
        dst=dst,
        proto=proto,
        to=to,
        dports=dports,
        to_port=to_port,
        src=_prefixes(d.get("src", []), f"{path}.src"),
    )


def parse_nat(section: Any, path: str = "nat") -> NatConfig:
    """The ``[nat]`` table (as tomllib gives it) -> NatConfig; raises NatRuleError."""
    if section is None:
        return NatConfig()
    d = _check_keys(section, path, ("seed", "snat", "dnat"))
    seed = d.get("seed", "")
    if not isinstance(seed, str):
        raise NatRuleError(f"{path}.seed", "not a string")
    out: dict[str, list[Any]] = {"snat": [], "dnat": []}
    for kind, fn in (("snat", _snat), ("dnat", _dnat)):
        rules = d.get(kind, [])
        if not isinstance(rules, list):
            raise NatRuleError(f"{path}.{kind}", f"must be an array of tables ([[nat.{kind}]])")
        out[kind] = [fn(r, f"{path}.{kind}[{i}]") for i, r in enumerate(rules)]
    return NatConfig(tuple(out["snat"]), tuple(out["dnat"]), seed.encode())
