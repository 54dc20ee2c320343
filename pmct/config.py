"""TOML configuration of a pmct node -> frozen dataclasses, with errors that name key and line.

Rules:
1. The file is read with tomllib; every value is checked here, once, so the daemon never meets
   a wrong type at 3 a.m. An error is a ConfigError whose message names the key path
   (``policy.rule[2].dport``) and, where the key can be found in the text, its line.
2. Unknown keys are errors (a typo must not silently fall back to a default), with a
   "did you mean" hint.
3. Every key is optional. The defaults are the annotated file configs/pmct.toml, which is
   embedded here as DEFAULT_TOML (a test keeps the two byte-equal), so the documentation and
   the behaviour cannot drift apart.
4. Only node/ and cli import this module: it turns TOML into each layer's own settings object
   (the engine's ``Settings``, the node's ``Ruleset``); the cores never see TOML.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from pmct.conntrack.constants import TcpState
from pmct.conntrack.helpers import HELPERS, assignments
from pmct.conntrack.settings import DEFAULT_TCP_TIMEOUTS, Settings, Timeouts
from pmct.errors import ConfigError
from pmct.nat.rules import NatConfig, NatRuleError, parse_nat
from pmct.node.policy import (
    ACTION_BY_NAME,
    CTSTATE_BY_NAME,
    DIRECTION_BY_NAME,
    PORT_PROTOS,
    PROTO_BY_NAME,
    Action,
    Net,
    Rule,
    Ruleset,
    parse_net,
)

__all__ = [
    "DEFAULT_TOML",
    "ClusterConfig",
    "ClusterInterface",
    "Config",
    "HelpersConfig",
    "InterfacesConfig",
    "MetricsConfig",
    "NodeConfig",
    "PolicyConfig",
    "QueueConfig",
    "SyncNodeConfig",
    "load_config",
    "parse_config",
]

ROLES: Final = ("active", "passive")
FAIL_MODES: Final = ("open", "closed")
BACKENDS: Final = ("netfilterqueue", "netlink")
LOG_LEVELS: Final = ("debug", "info", "warning", "error")
CLUSTER_MODES: Final = ("hub", "multicast-mac")
SYNC_MODES: Final = ("concurrent", "replicate")
SYNC_TRANSPORTS: Final = ("unicast", "multicast")
_IFNAME: Final = re.compile(r"^[^\s/:]{1,15}$")  # kernel dev_valid_name(): < IFNAMSIZ, no / : ws
_MAC: Final = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")


@dataclass(frozen=True, slots=True)
class NodeConfig:
    name: str = "pmct"
    role: str = "passive"
    run_dir: str = "/run/pmct"
    log_level: str = "info"

    @property
    def control_socket(self) -> str:
        return str(Path(self.run_dir) / "control.sock")

    @property
    def state_file(self) -> str:
        return str(Path(self.run_dir) / "role")


@dataclass(frozen=True, slots=True)
class InterfacesConfig:
    data: tuple[str, ...] = ("lan0", "wan0")
    sync: str = ""


@dataclass(frozen=True, slots=True)
class ClusterInterface:
    name: str
    mac: str = ""
    addresses: tuple[str, ...] = ()  # "198.18.1.1/24" (interface notation)


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    # "hub": both nodes wear the same unicast cluster MAC (the segment must flood: a hub);
    # "multicast-mac": own MACs, the cluster MAC is a multicast one the neighbours learn via ARP
    # (a learning switch floods it to both nodes; netlink.py Links.set_mac, netfilter.py ClusterMac)
    mode: str = "hub"
    promisc: bool = True
    gratuitous_arp: bool = True
    interfaces: tuple[ClusterInterface, ...] = ()

    def interface(self, name: str) -> ClusterInterface | None:
        for ci in self.interfaces:
            if ci.name == name:
                return ci
        return None


DEFAULT_BACKEND: Final = "netlink"  # docs/performance.md: faster, large messages, GSO, NAT
# How a passive node sees the wire: "ring" (a TPACKET_V3 packet ring and an ingress drop,
# pmct/node/capture.py) or "queue" (NFQUEUE, as the active node).
PASSIVE_CAPTURES: Final = ("ring", "queue")
DEFAULT_PASSIVE_CAPTURE: Final = "ring"


@dataclass(frozen=True, slots=True)
class QueueConfig:
    num: int = 0
    fail: str = "open"
    max_len: int = 65536
    rcvbuf: int = 128 * 1024 * 1024
    gso: bool = False
    ipv6: bool = True
    backend: str = DEFAULT_BACKEND
    passive_capture: str = DEFAULT_PASSIVE_CAPTURE
    verdict_thread: bool = True
    ring_size: int = 64 << 20

    @property
    def fail_open(self) -> bool:
        return self.fail == "open"


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    rules: tuple[Rule, ...] = ()
    default: Action = Action.DROP
    ctstate_mark: bool = False
    ctstate_mark_mask: int = 0xFF
    reject_mark: int = 0x80000000

    def ruleset(self) -> Ruleset:
        """A fresh Ruleset (it carries hit counters, so each daemon gets its own)."""
        return Ruleset(self.rules, self.default)


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    listen: str = ""  # "host:port"; "" = off

    def address(self) -> tuple[str, int] | None:
        if not self.listen:
            return None
        host, _, port = self.listen.rpartition(":")
        return (host.strip("[]") or "127.0.0.1", int(port))


@dataclass(frozen=True, slots=True)
class SyncNodeConfig:
    """The node's [sync] section (pmct.node.syncshell maps it onto pmct.sync.SyncConfig)."""

    enabled: bool = False
    node_id: int = 1
    peers: tuple[int, ...] = (2,)
    mode: str = "concurrent"
    transport: str = "unicast"
    address: tuple[str, ...] = ()  # unicast: peer address(es); multicast: the group
    port: int = 3780
    backlog: int = 1024
    initsync_rate: float = 0.0  # connections per second; 0 = unthrottled
    tcp_window_tracking: bool = True  # False: synced entries without a window are liberal
    hmac_key_file: str = ""


@dataclass(frozen=True, slots=True)
class HelpersConfig:
    """The [helpers] section: which connections get a connection helper, by destination port.

    Like an nftables ``ct helper`` object with a ``ct helper set`` rule per port (nft_ct.c),
    not the kernel's old automatic assignment (nf_conntrack_helper=0 since 4.7): nothing has a
    helper unless listed here. ``ports`` is ``((name, (port, ...)), ...)`` in file order.
    """

    ports: tuple[tuple[str, tuple[int, ...]], ...] = ()

    def mapping(self) -> dict[str, tuple[int, ...]]:
        """What ``Engine(helpers=...)`` takes: ``{"ftp": (21,), "tftp": (69,)}``."""
        return {name: ports for name, ports in self.ports if ports}


@dataclass(frozen=True, slots=True)
class Config:
    node: NodeConfig = field(default_factory=NodeConfig)
    interfaces: InterfacesConfig = field(default_factory=InterfacesConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    conntrack: Settings = field(default_factory=Settings)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    sync: SyncNodeConfig = field(default_factory=SyncNodeConfig)
    helpers: HelpersConfig = field(default_factory=HelpersConfig)
    nat: NatConfig = field(default_factory=NatConfig)  # [nat] (pmct/nat/rules.py, issue 8)
    source: str = "<default>"  # the file it came from, for messages


# ---------------------------------------------------------------------------- key lines


_HEADER: Final = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEYPART: Final = r"""(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')"""
_ASSIGN: Final = re.compile(rf"^\s*({_KEYPART}(?:\s*\.\s*{_KEYPART})*)\s*=")


def _split_key(k: str) -> list[str]:
    parts = re.findall(r"""[A-Za-z0-9_-]+|"[^"]*"|'[^']*'""", k)
    return [p[1:-1] if p[:1] in "\"'" else p for p in parts]


def key_lines(text: str) -> dict[str, int]:
    """Map key paths (``a.b``, ``policy.rule[1].action``) to 1-based line numbers.

    A line-oriented approximation of TOML, used only to point error messages at a line: it
    follows table headers, arrays of tables and ``key =`` lines, and skips lines inside
    multi-line arrays and strings.
    """
    lines: dict[str, int] = {}
    counts: dict[str, int] = {}
    prefix = ""
    depth = 0  # open [ of a multi-line array value
    in_ml = None  # open multi-line string delimiter
    for no, raw in enumerate(text.splitlines(), 1):
        line = raw
        if in_ml is not None:
            if in_ml in line:
                in_ml = None
            continue
        if depth > 0:
            depth += _bracket_balance(line)
            continue
        m = _HEADER.match(line)
        if m and not _ASSIGN.match(line):
            path = ".".join(_split_key(m.group(2)))
            if m.group(1) == "[[":
                idx = counts.get(path, 0)
                counts[path] = idx + 1
                lines.setdefault(path, no)
                prefix = f"{path}[{idx}]"
            else:
                prefix = path
            lines.setdefault(prefix, no)
            continue
        m = _ASSIGN.match(line)
        if m:
            key = ".".join(_split_key(m.group(1)))
            path = f"{prefix}.{key}" if prefix else key
            lines.setdefault(path, no)
            rest = line[m.end() :]
            for delim in ('"""', "'''"):
                if rest.count(delim) == 1:
                    in_ml = delim
            if in_ml is None:
                depth = max(0, _bracket_balance(rest))
    return lines


def _bracket_balance(s: str) -> int:
    s = re.sub(r'"(?:\\.|[^"\\])*"|\'[^\']*\'', "", s)
    s = s.split("#", 1)[0]
    return s.count("[") + s.count("{") - s.count("]") - s.count("}")


class _Ctx:
    """Where we are: the file, its key->line map, and the current key path."""

    __slots__ = ("lines", "source")

    def __init__(self, source: str, text: str) -> None:
        self.source = source
        self.lines = key_lines(text)

    def error(self, path: str, msg: str) -> ConfigError:
        line = self._line(path)
        where = f"{self.source}:{line}" if line else self.source
        return ConfigError(f"{where}: {path}: {msg}")

    def _line(self, path: str) -> int | None:
        p = path
        while p:
            if p in self.lines:
                return self.lines[p]
            cut = max(p.rfind("."), p.rfind("["))
            p = p[:cut] if cut > 0 else ""
        return None


# ---------------------------------------------------------------------------- value checks


def _table(ctx: _Ctx, data: Any, path: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ctx.error(path, f"must be a table, not {_tname(data)}")
    for k in data:
        if k not in allowed:
            hint = difflib.get_close_matches(k, allowed, n=1)
            extra = (
                f"; did you mean '{hint[0]}'?" if hint else f"; known keys: {', '.join(allowed)}"
            )
            raise ctx.error(f"{path}.{k}" if path else k, f"unknown key{extra}")
    return data


def _tname(v: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "a table",
    }.get(type(v), type(v).__name__)


def _bool(ctx: _Ctx, v: Any, path: str) -> bool:
    if not isinstance(v, bool):
        raise ctx.error(path, f"must be true or false, not {_tname(v)}")
    return v


def _int(ctx: _Ctx, v: Any, path: str, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ctx.error(path, f"must be an integer, not {_tname(v)}")
    if not lo <= v <= hi:
        raise ctx.error(path, f"must be between {lo} and {hi}, not {v}")
    return v


def _num(ctx: _Ctx, v: Any, path: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ctx.error(path, f"must be a number of seconds, not {_tname(v)}")
    if v < 0:
        raise ctx.error(path, f"must not be negative, not {v}")
    return float(v)


def _str(ctx: _Ctx, v: Any, path: str, choices: tuple[str, ...] | None = None) -> str:
    if not isinstance(v, str):
        raise ctx.error(path, f"must be a string, not {_tname(v)}")
    if choices is not None and v not in choices:
        raise ctx.error(path, f"must be one of {', '.join(map(repr, choices))}, not {v!r}")
    return v


def _list(ctx: _Ctx, v: Any, path: str) -> list[Any]:
    """A value that may be given as one item or an array of items."""
    if isinstance(v, list):
        if not v:
            raise ctx.error(path, "must not be an empty array")
        return v
    return [v]


def _ifname(ctx: _Ctx, v: Any, path: str) -> str:
    s = _str(ctx, v, path)
    if not _IFNAME.match(s):
        raise ctx.error(path, f"{s!r} is not a valid interface name")
    return s


# ---------------------------------------------------------------------------- sections

_SECTIONS: Final = (
    "node",
    "interfaces",
    "cluster",
    "queue",
    "conntrack",
    "policy",
    "metrics",
    "sync",
    "helpers",
    "nat",
)


def _node(ctx: _Ctx, d: Any) -> NodeConfig:
    d = _table(ctx, d, "node", ("name", "role", "run_dir", "log_level"))
    kw: dict[str, Any] = {}
    if "name" in d:
        kw["name"] = _str(ctx, d["name"], "node.name")
        if not kw["name"]:
            raise ctx.error("node.name", "must not be empty")
    if "role" in d:
        kw["role"] = _str(ctx, d["role"], "node.role", ROLES)
    if "run_dir" in d:
        kw["run_dir"] = _str(ctx, d["run_dir"], "node.run_dir")
        if not kw["run_dir"].startswith("/"):
            raise ctx.error("node.run_dir", "must be an absolute path")
    if "log_level" in d:
        kw["log_level"] = _str(ctx, d["log_level"], "node.log_level", LOG_LEVELS)
    return NodeConfig(**kw)


def _interfaces(ctx: _Ctx, d: Any) -> InterfacesConfig:
    d = _table(ctx, d, "interfaces", ("data", "sync"))
    kw: dict[str, Any] = {}
    if "data" in d:
        v = d["data"]
        if not isinstance(v, list):
            raise ctx.error("interfaces.data", f"must be an array of names, not {_tname(v)}")
        names = tuple(_ifname(ctx, x, f"interfaces.data[{i}]") for i, x in enumerate(v))
        if len(set(names)) != len(names):
            raise ctx.error("interfaces.data", "lists an interface twice")
        kw["data"] = names
    if "sync" in d:
        s = _str(ctx, d["sync"], "interfaces.sync")
        kw["sync"] = _ifname(ctx, s, "interfaces.sync") if s else ""
    cfg = InterfacesConfig(**kw)
    if cfg.sync and cfg.sync in cfg.data:
        raise ctx.error("interfaces.sync", f"{cfg.sync!r} is also a data interface")
    return cfg


def _cluster(ctx: _Ctx, d: Any, data_ifaces: tuple[str, ...]) -> ClusterConfig:
    d = _table(ctx, d, "cluster", ("mode", "promisc", "gratuitous_arp", "interface"))
    kw: dict[str, Any] = {}
    mode = "hub"
    if "mode" in d:
        mode = kw["mode"] = _str(ctx, d["mode"], "cluster.mode", CLUSTER_MODES)
    for k in ("promisc", "gratuitous_arp"):
        if k in d:
            kw[k] = _bool(ctx, d[k], f"cluster.{k}")
    if "interface" in d:
        tab = d["interface"]
        if not isinstance(tab, dict):
            raise ctx.error("cluster.interface", "must be a table of interface tables")
        out = []
        for name, sub in tab.items():
            p = f"cluster.interface.{name}"
            _ifname(ctx, name, p)
            if name not in data_ifaces:
                raise ctx.error(p, f"{name!r} is not one of interfaces.data")
            sub = _table(ctx, sub, p, ("mac", "addresses"))
            mac = ""
            if "mac" in sub:
                mac = _str(ctx, sub["mac"], f"{p}.mac").lower()
                if not _MAC.match(mac):
                    raise ctx.error(f"{p}.mac", f"{mac!r} is not a MAC address (aa:bb:cc:dd:ee:ff)")
                multicast = bool(int(mac[:2], 16) & 1)
                if mode == "hub" and multicast:
                    raise ctx.error(
                        f"{p}.mac",
                        "must be a unicast MAC (lowest bit of the first byte 0) with "
                        'cluster.mode = "hub"; a multicast cluster MAC needs "multicast-mac"',
                    )
                if mode == "multicast-mac" and not multicast:
                    raise ctx.error(
                        f"{p}.mac",
                        "must be a multicast MAC (lowest bit of the first byte 1, e.g. "
                        '"03:00:00:c1:00:01") with cluster.mode = "multicast-mac"',
                    )
            addrs: list[str] = []
            if "addresses" in sub:
                v = sub["addresses"]
                if not isinstance(v, list):
                    raise ctx.error(f"{p}.addresses", f"must be an array, not {_tname(v)}")
                for i, a in enumerate(v):
                    ap = f"{p}.addresses[{i}]"
                    s = _str(ctx, a, ap)
                    try:
                        ipaddress.ip_interface(s)
                    except ValueError:
                        raise ctx.error(ap, f"{s!r} is not an address with prefix length") from None
                    if mode == "multicast-mac" and ipaddress.ip_interface(s).version == 6:
                        # Only ARP replies can be rewritten to the cluster MAC (an nft arp
                        # chain); IPv6 neighbour advertisements would carry the node's own MAC.
                        raise ctx.error(
                            ap, 'IPv6 cluster addresses need cluster.mode = "hub" (ARP only)'
                        )
                    addrs.append(s)
            if mode == "multicast-mac" and not mac:
                raise ctx.error(p, 'needs a mac with cluster.mode = "multicast-mac"')
            out.append(ClusterInterface(name, mac, tuple(addrs)))
        kw["interfaces"] = tuple(out)
    return ClusterConfig(**kw)


def _queue(ctx: _Ctx, d: Any) -> QueueConfig:
    d = _table(
        ctx,
        d,
        "queue",
        (
            "backend",
            "num",
            "fail",
            "max_len",
            "rcvbuf",
            "gso",
            "ipv6",
            "passive_capture",
            "ring_size",
            "verdict_thread",
        ),
    )
    kw: dict[str, Any] = {}
    if "num" in d:
        kw["num"] = _int(ctx, d["num"], "queue.num", 0, 65535)
    if "fail" in d:
        kw["fail"] = _str(ctx, d["fail"], "queue.fail", FAIL_MODES)
    if "max_len" in d:
        kw["max_len"] = _int(ctx, d["max_len"], "queue.max_len", 1, 1 << 20)
    if "rcvbuf" in d:
        kw["rcvbuf"] = _int(ctx, d["rcvbuf"], "queue.rcvbuf", 65536, 1 << 30)
    for k in ("gso", "ipv6", "verdict_thread"):
        if k in d:
            kw[k] = _bool(ctx, d[k], f"queue.{k}")
    if "backend" in d:
        kw["backend"] = _str(ctx, d["backend"], "queue.backend", BACKENDS)
    if "passive_capture" in d:
        kw["passive_capture"] = _str(
            ctx, d["passive_capture"], "queue.passive_capture", PASSIVE_CAPTURES
        )
    if "ring_size" in d:
        kw["ring_size"] = _int(ctx, d["ring_size"], "queue.ring_size", 2 << 20, 1 << 32)
    if kw.get("gso") and kw.get("backend", DEFAULT_BACKEND) != "netlink":
        # netfilterqueue receives into a 4 KB buffer: a GSO super-packet would be cut short
        # and never get a verdict (nfqueue.py rule 2).
        raise ctx.error("queue.gso", 'needs backend = "netlink"')
    return QueueConfig(**kw)


# conntrack.timeouts keys: the Timeouts float fields plus tcp_<state> for each TCP state slot.
_TCP_TIMEOUT_SLOTS: Final = {
    f"tcp_{s.name.lower()}": int(s)
    for s in TcpState
    if s not in (TcpState.NONE, TcpState.MAX, TcpState.IGNORE, TcpState.TIMEOUT_MAX)
}
_TIMEOUT_FIELDS: Final = tuple(f.name for f in dataclasses.fields(Timeouts) if f.name != "tcp")
_SETTINGS_FIELDS: Final = tuple(
    f.name for f in dataclasses.fields(Settings) if f.name != "timeouts"
)


def _conntrack(ctx: _Ctx, d: Any) -> Settings:
    d = _table(ctx, d, "conntrack", (*_SETTINGS_FIELDS, "timeouts"))
    base = Settings()
    kw: dict[str, Any] = {}
    for k in _SETTINGS_FIELDS:
        if k not in d:
            continue
        default = getattr(base, k)
        p = f"conntrack.{k}"
        if isinstance(default, bool):
            kw[k] = _bool(ctx, d[k], p)
        elif isinstance(default, int):
            kw[k] = _int(ctx, d[k], p, 0 if k != "max_entries" else 1, 1 << 31)
        else:
            kw[k] = _num(ctx, d[k], p)
    if "timeouts" in d:
        t = _table(
            ctx, d["timeouts"], "conntrack.timeouts", (*_TCP_TIMEOUT_SLOTS, *_TIMEOUT_FIELDS)
        )
        tcp = list(DEFAULT_TCP_TIMEOUTS)
        tkw: dict[str, Any] = {}
        for k, v in t.items():
            secs = _num(ctx, v, f"conntrack.timeouts.{k}")
            if k in _TCP_TIMEOUT_SLOTS:
                tcp[_TCP_TIMEOUT_SLOTS[k]] = secs
            else:
                tkw[k] = secs
        kw["timeouts"] = Timeouts(tcp=tuple(tcp), **tkw)
    return Settings(**kw)


_RULE_KEYS: Final = (
    "ctstate",
    "direction",
    "in",
    "out",
    "proto",
    "src",
    "dst",
    "sport",
    "dport",
    "syn",
    "action",
    "comment",
)


def _ports(ctx: _Ctx, v: Any, path: str) -> tuple[tuple[int, int], ...]:
    out = []
    for i, x in enumerate(_list(ctx, v, path)):
        p = f"{path}[{i}]" if isinstance(v, list) else path
        if isinstance(x, int) and not isinstance(x, bool):
            lo = hi = _int(ctx, x, p, 0, 65535)
        elif isinstance(x, str) and re.fullmatch(r"\s*\d+\s*-\s*\d+\s*", x):
            a, b = (int(y) for y in x.split("-"))
            lo, hi = _int(ctx, a, p, 0, 65535), _int(ctx, b, p, 0, 65535)
            if lo > hi:
                raise ctx.error(p, f"range {x!r} is backwards")
        else:
            raise ctx.error(p, f'must be a port or a range like "1024-65535", not {x!r}')
        out.append((lo, hi))
    return tuple(out)


def _rule(ctx: _Ctx, d: Any, path: str, data_ifaces: tuple[str, ...]) -> Rule:
    d = _table(ctx, d, path, _RULE_KEYS)
    if "action" not in d:
        raise ctx.error(path, "needs an action (accept, drop or reject)")
    kw: dict[str, Any] = {
        "action": ACTION_BY_NAME[_str(ctx, d["action"], f"{path}.action", tuple(ACTION_BY_NAME))]
    }
    if "ctstate" in d:
        states: list[int] = []
        for x in _list(ctx, d["ctstate"], f"{path}.ctstate"):
            name = _str(ctx, x, f"{path}.ctstate", tuple(CTSTATE_BY_NAME)).lower()
            states.extend(CTSTATE_BY_NAME[name])
        kw["ctstates"] = tuple(sorted(set(states)))
    if "direction" in d:
        kw["direction"] = DIRECTION_BY_NAME[
            _str(ctx, d["direction"], f"{path}.direction", tuple(DIRECTION_BY_NAME))
        ]
    for key, attr in (("in", "iif"), ("out", "oif")):
        if key in d:
            names = frozenset(
                _ifname(ctx, x, f"{path}.{key}") for x in _list(ctx, d[key], f"{path}.{key}")
            )
            if key == "in":
                bad = sorted(names - set(data_ifaces))
                if bad:
                    raise ctx.error(
                        f"{path}.in",
                        f"{bad[0]!r} is not a data interface: only interfaces.data are queued",
                    )
            kw[attr] = names
    if "proto" in d:
        protos = set()
        for x in _list(ctx, d["proto"], f"{path}.proto"):
            if isinstance(x, int) and not isinstance(x, bool):
                protos.add(_int(ctx, x, f"{path}.proto", 0, 255))
            else:
                protos.add(
                    PROTO_BY_NAME[_str(ctx, x, f"{path}.proto", tuple(PROTO_BY_NAME)).lower()]
                )
        kw["protos"] = frozenset(protos)
    for key in ("src", "dst"):
        if key in d:
            nets: list[Net] = []
            for x in _list(ctx, d[key], f"{path}.{key}"):
                s = _str(ctx, x, f"{path}.{key}")
                try:
                    nets.append(parse_net(s))
                except ValueError:
                    raise ctx.error(f"{path}.{key}", f"{s!r} is not an address or prefix") from None
            kw[key] = tuple(nets)
    for key, attr in (("sport", "sports"), ("dport", "dports")):
        if key in d:
            kw[attr] = _ports(ctx, d[key], f"{path}.{key}")
            if "proto" not in d:
                raise ctx.error(f"{path}.{key}", "needs a proto with ports (tcp, udp, sctp, ...)")
            if not kw["protos"] <= PORT_PROTOS:
                raise ctx.error(f"{path}.{key}", "every proto of this rule must have ports")
    if "syn" in d:
        kw["syn"] = _bool(ctx, d["syn"], f"{path}.syn")
        if kw.get("protos") != frozenset({6}):
            raise ctx.error(f"{path}.syn", 'needs proto = "tcp"')
    if "comment" in d:
        kw["comment"] = _str(ctx, d["comment"], f"{path}.comment")
    return Rule(**kw)


def _policy(ctx: _Ctx, d: Any, data_ifaces: tuple[str, ...]) -> PolicyConfig:
    d = _table(
        ctx, d, "policy", ("default", "ctstate_mark", "ctstate_mark_mask", "reject_mark", "rule")
    )
    kw: dict[str, Any] = {}
    if "default" in d:
        kw["default"] = ACTION_BY_NAME[
            _str(ctx, d["default"], "policy.default", tuple(ACTION_BY_NAME))
        ]
    if "ctstate_mark" in d:
        kw["ctstate_mark"] = _bool(ctx, d["ctstate_mark"], "policy.ctstate_mark")
    for k in ("ctstate_mark_mask", "reject_mark"):
        if k in d:
            kw[k] = _int(ctx, d[k], f"policy.{k}", 1, 0xFFFFFFFF)
    if "reject_mark" in kw and kw["reject_mark"] & (kw["reject_mark"] - 1):
        raise ctx.error("policy.reject_mark", "must be a single bit, e.g. 0x80000000")
    if "rule" in d:
        rules = d["rule"]
        if not isinstance(rules, list):
            raise ctx.error("policy.rule", "must be an array of tables ([[policy.rule]])")
        kw["rules"] = tuple(
            _rule(ctx, r, f"policy.rule[{i}]", data_ifaces) for i, r in enumerate(rules)
        )
    cfg = PolicyConfig(**kw)
    mask = cfg.ctstate_mark_mask
    if cfg.ctstate_mark and (0x4F * (mask & -mask)) & ~mask:
        raise ctx.error(
            "policy.ctstate_mark_mask", "needs room for the bits 0x4f (7 contiguous bits)"
        )
    if cfg.reject_mark & mask and cfg.ctstate_mark:
        raise ctx.error("policy.reject_mark", "overlaps policy.ctstate_mark_mask")
    return cfg


def _metrics(ctx: _Ctx, d: Any) -> MetricsConfig:
    d = _table(ctx, d, "metrics", ("listen",))
    if "listen" not in d:
        return MetricsConfig()
    s = _str(ctx, d["listen"], "metrics.listen")
    cfg = MetricsConfig(s)
    if s:
        try:
            _, port = cfg.address()  # type: ignore[misc]
            if not 0 < port < 65536:
                raise ValueError
        except ValueError:
            raise ctx.error("metrics.listen", f'{s!r} is not "host:port"') from None
    return cfg


_SYNC_KEYS: Final = tuple(f.name for f in dataclasses.fields(SyncNodeConfig))


def _sync(ctx: _Ctx, d: Any, interfaces: InterfacesConfig) -> SyncNodeConfig:
    d = _table(ctx, d, "sync", _SYNC_KEYS)
    kw: dict[str, Any] = {}
    if "enabled" in d:
        kw["enabled"] = _bool(ctx, d["enabled"], "sync.enabled")
    if "node_id" in d:
        kw["node_id"] = _int(ctx, d["node_id"], "sync.node_id", 1, 0xFFFF)
    if "peers" in d:
        ids = [_int(ctx, x, "sync.peers", 1, 0xFFFF) for x in _list(ctx, d["peers"], "sync.peers")]
        kw["peers"] = tuple(sorted(set(ids)))
    if "mode" in d:
        kw["mode"] = _str(ctx, d["mode"], "sync.mode", SYNC_MODES)
    if "transport" in d:
        kw["transport"] = _str(ctx, d["transport"], "sync.transport", SYNC_TRANSPORTS)
    if "address" in d:
        addrs: list[str] = []
        for x in _list(ctx, d["address"], "sync.address"):
            s = _str(ctx, x, "sync.address")
            if not s:
                continue
            try:
                addrs.append(str(ipaddress.ip_address(s)))
            except ValueError:
                raise ctx.error("sync.address", f"{s!r} is not an IP address") from None
        kw["address"] = tuple(addrs)
    if "port" in d:
        kw["port"] = _int(ctx, d["port"], "sync.port", 1, 65535)
    if "backlog" in d:
        kw["backlog"] = _int(ctx, d["backlog"], "sync.backlog", 2, 1 << 20)
    if "initsync_rate" in d:
        kw["initsync_rate"] = _num(ctx, d["initsync_rate"], "sync.initsync_rate")
    if "tcp_window_tracking" in d:
        kw["tcp_window_tracking"] = _bool(ctx, d["tcp_window_tracking"], "sync.tcp_window_tracking")
    if "hmac_key_file" in d:
        kw["hmac_key_file"] = _str(ctx, d["hmac_key_file"], "sync.hmac_key_file")
        if kw["hmac_key_file"] and not kw["hmac_key_file"].startswith("/"):
            raise ctx.error("sync.hmac_key_file", "must be an absolute path")
    cfg = SyncNodeConfig(**kw)
    if cfg.node_id in cfg.peers:
        raise ctx.error("sync.peers", f"lists this node's own id {cfg.node_id}")
    if not cfg.enabled:
        return cfg
    if not interfaces.sync:
        raise ctx.error("sync.enabled", "needs interfaces.sync (the sync interface)")
    if not cfg.address:
        raise ctx.error("sync.address", "needs the peer's address (unicast) or the group")
    if len({ipaddress.ip_address(a).version for a in cfg.address}) != 1:
        raise ctx.error("sync.address", "mixes IPv4 and IPv6")
    multicast = [ipaddress.ip_address(a).is_multicast for a in cfg.address]
    if cfg.transport == "multicast" and (len(cfg.address) != 1 or not multicast[0]):
        raise ctx.error("sync.address", 'transport = "multicast" needs one multicast group')
    if cfg.transport == "unicast" and any(multicast):
        raise ctx.error("sync.address", 'a multicast group needs transport = "multicast"')
    return cfg


def _helpers(ctx: _Ctx, d: Any) -> HelpersConfig:
    """``[helpers]``: ``name = port`` or ``name = [port, ...]`` for each helper in HELPERS;
    ``[]`` switches a helper off. A port given twice, or one TCP/UDP port given to two
    helpers, is an error (one ``ct helper set`` per port)."""
    d = _table(ctx, d, "helpers", tuple(sorted(HELPERS)))
    out: list[tuple[str, tuple[int, ...]]] = []
    for name, v in d.items():
        path = f"helpers.{name}"
        items = v if isinstance(v, list) else [v]
        ports: list[int] = []
        for i, x in enumerate(items):
            p = f"{path}[{i}]" if isinstance(v, list) else path
            if isinstance(x, bool) or not isinstance(x, int):
                raise ctx.error(p, f"must be a port number (1..65535), not {_tname(x)}")
            port = _int(ctx, x, p, 1, 65535)
            if port in ports:
                raise ctx.error(path, f"lists port {port} twice")
            ports.append(port)
        out.append((name, tuple(ports)))
    cfg = HelpersConfig(tuple(out))
    try:
        assignments(cfg.mapping())
    except ValueError as e:
        raise ctx.error("helpers", str(e)) from None
    return cfg


def _nat(ctx: _Ctx, d: Any, interfaces: InterfacesConfig, queue: QueueConfig) -> NatConfig:
    """``[nat]``: pmct/nat/rules.py parses the rules (its NatRuleError names the key path);
    here the node-level checks: a masquerade interface must be a data interface, and NAT
    needs ``queue.gso = false``."""
    try:
        cfg = parse_nat(d)
    except NatRuleError as e:
        raise ctx.error(e.path, e.msg) from None
    for i, r in enumerate(cfg.snat):
        if r.masquerade and r.masquerade not in interfaces.data:
            raise ctx.error(
                f"nat.snat[{i}].masquerade",
                f"{r.masquerade!r} is not a data interface ({', '.join(interfaces.data)})",
            )
    if cfg.enabled and queue.fail_open:
        # Fail open lets a packet pass that pmct did not rewrite: an outbound one leaks the
        # LAN address, an inbound one for the public address is delivered to this node's own
        # stack, which answers with a TCP RST and kills the NATed connection (seen in the lab
        # while a dying active node's queue is unbound: --queue-bypass).
        raise ctx.error("nat", 'needs queue.fail = "closed" (an un-NATed packet must not pass)')
    if cfg.enabled and queue.gso:
        # A GSO super-packet arrives with a partial checksum (CHECKSUM_PARTIAL) and
        # nfnetlink_queue.c nfqnl_mangle() marks a rewritten packet CHECKSUM_NONE.
        raise ctx.error("nat", "needs queue.gso = false (a GSO packet cannot be rewritten)")
    return cfg


# ---------------------------------------------------------------------------- entry points


def parse_config(text: str, source: str = "<string>") -> Config:
    """Parse and check a TOML text; raises ConfigError naming the key (and line)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML: {e}") from None
    ctx = _Ctx(source, text)
    _table(ctx, data, "", _SECTIONS)
    interfaces = _interfaces(ctx, data.get("interfaces", {}))
    queue = _queue(ctx, data.get("queue", {}))
    conntrack = _conntrack(ctx, data.get("conntrack", {}))
    if conntrack.checksum and queue.gso:
        # With NFQA_CFG_F_GSO the kernel queues GSO/GRO super-packets and packets of a local
        # or virtual sender with the transport checksum not yet computed (CHECKSUM_PARTIAL);
        # without it, nfqnl_enqueue_packet() computes it first. The kernel's own check trusts
        # such packets (nf_ip_checksum()); NFQUEUE's payload alone cannot tell them apart,
        # so pmct would call each of them INVALID.
        raise ctx.error(
            "conntrack.checksum",
            "needs queue.gso = false (a queued GSO packet has no final checksum yet)",
        )
    return Config(
        node=_node(ctx, data.get("node", {})),
        interfaces=interfaces,
        cluster=_cluster(ctx, data.get("cluster", {}), interfaces.data),
        queue=queue,
        conntrack=conntrack,
        policy=_policy(ctx, data.get("policy", {}), interfaces.data),
        metrics=_metrics(ctx, data.get("metrics", {})),
        sync=_sync(ctx, data.get("sync", {}), interfaces),
        helpers=_helpers(ctx, data.get("helpers", {})),
        nat=_nat(ctx, data.get("nat", {}), interfaces, queue),
        source=source,
    )


def load_config(path: str | Path | None = None) -> Config:
    """Read a config file; None gives the built-in default (DEFAULT_TOML)."""
    if path is None:
        return parse_config(DEFAULT_TOML, "<default>")
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{p}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not UTF-8 text") from None
    return parse_config(text, str(p))


def as_mapping(cfg: Config) -> Mapping[str, Any]:
    """The effective configuration as plain data (for ``pmct status --json``)."""
    return {
        "source": cfg.source,
        "node": dataclasses.asdict(cfg.node),
        "interfaces": {"data": list(cfg.interfaces.data), "sync": cfg.interfaces.sync},
        "queue": dataclasses.asdict(cfg.queue),
        "helpers": {name: list(ports) for name, ports in cfg.helpers.ports},
    }


# The annotated default, byte-equal to configs/pmct.toml (tests/unit/node/test_config.py).
DEFAULT_TOML: Final = """\
# pmct node configuration: the annotated default.
#
# `pmct run --config FILE` reads a file like this one. Every key is optional: a key left out
# takes the value shown here (this file is byte-for-byte the default built into pmct, so
# `pmct run` without --config behaves exactly as if it had read it). Unknown keys are errors,
# reported with the key and its line.

[node]
# Shown in logs, `pmct status` and metrics.
name = "pmct"
# Role at start: "passive" tracks every packet, then drops it, and sends nothing on the data
# interfaces; "active" forwards what the policy accepts. `pmct promote` / `pmct demote` (or
# writing 1 / 0 to the state file) switch at run time.
role = "passive"
# Holds the control socket (control.sock, root only) and the state file (role). Two nodes on
# one host (a lab) need two directories.
run_dir = "/run/pmct"
# debug, info, warning or error; logs go to stdout (the journal under systemd).
log_level = "info"

[interfaces]
# Data interfaces: every IP packet arriving on them is queued to pmct (raw PREROUTING ->
# NFQUEUE) and the kernel's own conntrack is switched off for it (CT --notrack).
data = ["lan0", "wan0"]
# The sync interface is never queued and never silenced ("" = none).
sync = ""

[cluster]
# How both nodes receive every frame for the cluster:
#   "hub"           both nodes wear the same unicast cluster MAC on a segment that floods
#                   every frame (a hub, or a bridge with ageing 0); a learning switch would
#                   send the traffic to one node only.
#   "multicast-mac" each node keeps its own MAC and joins a multicast cluster MAC (e.g.
#                   03:00:00:c1:00:01); ARP from the cluster addresses names that MAC, so a
#                   learning switch floods the cluster's frames to both nodes (IPv4 only).
mode = "hub"
# Promiscuous mode on the data interfaces, so the node also sees frames not addressed to it.
promisc = true
# On promote, announce the cluster addresses (gratuitous ARP / unsolicited neighbour
# advertisement) so switches and neighbours learn where they live now.
gratuitous_arp = true
# The shared cluster MAC and addresses of each data interface, e.g.:
#
#   [cluster.interface.lan0]
#   mac = "02:00:00:c1:00:01"          # both nodes use the same MAC (on a hub)
#                                      # ("03:00:00:c1:00:01" with mode = "multicast-mac")
#   addresses = ["198.18.1.1/24"]      # added at start, removed at exit
#
# An interface without an entry keeps its own MAC and addresses.

[queue]
# How pmct talks to the queue: "netlink" (pmct's own reader on a raw netlink socket,
# compiled: one batch verdict per burst, 64 KB messages, so reassembled datagrams, GSO and
# NAT rewrites work) or "netfilterqueue" (the C binding: one verdict per packet, 4 KB
# receive buffer, so datagrams over 3,840 bytes get the fail-mode verdict; no GSO). See
# docs/performance.md and `python -m pmct.node.bench_live`.
backend = "netlink"
# NFQUEUE number (iptables --queue-num).
num = 0
# What happens when pmct cannot decide: "open" lets packets pass (iptables --queue-bypass
# while no daemon listens, NFQA_CFG_F_FAIL_OPEN when the queue is full, accept on an internal
# error); "closed" drops them.
fail = "open"
# Packets the kernel may hold for pmct before the queue counts as full, and the receive
# buffer of the queue socket (bytes). Both bound the bursts pmct absorbs when it falls behind
# for a moment; beyond them a packet is not tracked (fail open: it passes unseen and the
# kernel counts it nowhere; fail closed: dropped). Measured in the lab (bench_live, UDP flood):
# 4096 / 8 MiB let 27 % of the packets through untracked, 65536 / 128 MiB none.
max_len = 65536
rcvbuf = 134217728
# Queue GSO super-packets whole (NFQA_CFG_F_GSO) instead of segmenting them first: much
# faster with offloads on. Needs backend = "netlink". The kernel then also leaves unfinished
# the checksums it would otherwise compute before queueing (CHECKSUM_PARTIAL: GRO
# super-packets, senders on the same host or a virtual NIC), so it needs
# conntrack.checksum = false; NAT needs gso = false.
gso = false
# Also queue IPv6 (ip6tables); off when the host has no IPv6.
ipv6 = true
# How a passive node sees the wire: "ring" (a TPACKET_V3 packet ring on the data interfaces
# and an ingress drop of IP: no NFQUEUE round trip for packets it only tracks and drops,
# pmct/node/capture.py) or "queue" (NFQUEUE, as the active node). A frame the ring cannot
# hold is counted as missed (`pmct status`: queue.ring.drops).
passive_capture = "ring"
# Bytes of the ring (128 KiB blocks): 64 MiB bridges a 2 s stall of a quiet node, 0.4 s at
# 100,000 full-size frames/s.
ring_size = 67108864
# netlink backend: send verdicts from a second thread, so that the kernel's forwarding of
# accepted packets (which runs inside the verdict's system call) overlaps with the decisions
# on the next ones. About +25 % packets/s for a TCP flow in the lab (bench_live).
verdict_thread = true

[conntrack]
# The kernel's net.netfilter.nf_conntrack_* sysctls, same meaning and defaults.
tcp_loose = true
tcp_be_liberal = false
tcp_ignore_invalid_rst = false
tcp_max_retrans = 3
# true: a TCP or SCTP segment with a bad checksum is INVALID (needs queue.gso = false).
checksum = false
max_entries = 262144

[conntrack.timeouts]
# Seconds; kernel defaults (nf_conntrack_proto_*.c).
tcp_syn_sent = 120
tcp_syn_recv = 60
tcp_established = 432000
tcp_fin_wait = 120
tcp_close_wait = 60
tcp_last_ack = 30
tcp_time_wait = 120
tcp_close = 10
tcp_syn_sent2 = 120
tcp_retrans = 300
tcp_unack = 300
udp_unreplied = 30
udp_replied = 120
udp_stream_after = 2
icmp = 30
icmpv6 = 30
generic = 600
gre_unreplied = 30
gre_replied = 180

[policy]
# Action when no rule matches: "accept", "drop" or "reject".
default = "drop"
# Also write the ctstate into the packet mark, as nftables' ct state bits (invalid 0x1,
# established 0x2, related 0x4, new 0x8, untracked 0x40), under ctstate_mark_mask; for admins
# who keep their filter in nftables (then make the rules below accept everything).
ctstate_mark = false
ctstate_mark_mask = 0xff
# Mark bit pmct uses to hand "reject" packets to a REJECT rule in the filter table.
reject_mark = 0x80000000

# Rules, first match wins. Fields (all optional, a missing field matches anything):
#   ctstate   = "new" | "established" | "related" | "invalid" | "untracked", or a list
#   direction = "original" | "reply"
#   in, out   = interface name or list (out = where the routing table sends the packet)
#   proto     = "tcp" | "udp" | "icmp" | "icmpv6" | "sctp" | "udplite" | "gre" | number, or list
#   src, dst  = address or prefix, or a list ("198.18.0.0/15", "2001:db8::/32")
#   sport, dport = port, "low-high", or a list of them (needs a port protocol)
#   syn       = true: only a TCP SYN (iptables --syn); false: only TCP that is not a SYN
#   action    = "accept" | "drop" | "reject"   (required)
#   comment   = free text

[[policy.rule]]
ctstate = ["established", "related"]
action = "accept"

[[policy.rule]]
ctstate = "invalid"
action = "drop"

[[policy.rule]]
# IPv6 neighbour discovery and MLD: the engine leaves them untracked, as the kernel does.
ctstate = "untracked"
action = "accept"

[[policy.rule]]
ctstate = "new"
in = "lan0"
action = "accept"
comment = "the LAN may open connections"

[metrics]
# Prometheus text metrics over HTTP, e.g. "127.0.0.1:9468"; "" = off.
listen = ""

[sync]
# ct_sync (docs/protocol.md): connection state shared with the other node(s) over
# interfaces.sync. Off by default: each node then knows only what it saw itself.
enabled = false
# This node's id (1..65535, unique in the cluster) and the ids it accepts sync packets from.
node_id = 1
peers = [2]
# "concurrent": every node tracks from the wire; ct_sync names the master, brings a node that
# (re)started up to date with an init sync and repairs lost sync packets (NACK).
# "replicate": the passive node does not track from the wire; the active node streams every
# change of its table and the passive node applies it. Use the same mode on every node.
mode = "concurrent"
# "unicast" to the peer's address(es), or "multicast" to a group joined on interfaces.sync.
transport = "unicast"
# unicast: the peer's sync address (or a list); multicast: the group, e.g. "239.255.31.80".
# IPv6 alike: "fe80::2" (link-local: always scoped to interfaces.sync; "fe80::2%sync0" too),
# a ULA/global address, or a group such as "ff02::5c:3780" / "ff05::5c:3780". Sync datagrams
# are sized to the sync interface's MTU (no IP fragments).
address = ""
port = 3780
# Sent sync packets kept for retransmission; a loss older than that needs a new init sync.
backlog = 1024
# Init sync pace in connections per second (0: as fast as the receiver acknowledges).
# While its init sync runs a node is "not ready" (pmct status --ready exits 1).
initsync_rate = 0
# TCP window tracking of entries that arrive by sync without window data (as in conntrackd's
# TCPWindowTracking). true: the window is re-learnt from the next segments, as the kernel does
# for entries injected over ctnetlink; data in flight at a failover can then be judged out of
# window. false: such entries get the "be liberal" flag both ways (conntrackd's default).
tcp_window_tracking = true
# HMAC-SHA256 over every sync packet with a key shared by all nodes: a root-only file holding
# at least 16 bytes (surrounding whitespace is ignored). "" = no authentication.
hmac_key_file = ""

[helpers]
# Connection helpers by destination port, like an nftables `ct helper` object set per port
# (there is no automatic assignment, as in the kernel since 4.7). A helper reads a control
# connection and announces the data connection it negotiates (an "expectation", listed by
# `pmct conntrack -L expect`); that connection's first packet is then "related", which the
# rule ctstate = ["established", "related"] above admits. Known helpers:
#   ftp  = [21]     TCP: PORT, EPRT, PASV (227) and EPSV (229), IPv4 and IPv6
#   tftp = [69]     UDP: the server's reply from its new port
# A port or a list of ports; [] or no key = off. Nothing is assigned by default. Give both
# nodes the same helpers: ct_sync replicates expectations (replicate mode, init sync), and a
# node tracking in concurrent mode needs its own helper to see the control channel.

[nat]
# Source NAT / masquerade and port forwarding, done by pmct itself (docs/nat.md); off while no
# rule is given. Both nodes need the same rules and seed: each computes the same binding for
# the same packets, so the passive node's table matches the active one's and a failover keeps
# NATed connections (ct_sync carries the binding where the two could differ).
# The allocator's hash key (any string; the same on both nodes):
#   seed = "office-pair-1"
#
# Source NAT from the LAN to the WAN, e.g.:
#
#   [[nat.snat]]
#   src = ["198.18.1.0/24"]            # who is NATed (address or prefix, or a list)
#   not_dst = ["198.18.1.0/24"]        # optional: destinations that are not
#   masquerade = "wan0"                # the cluster addresses of a data interface (its own
#                                      # addresses when it has none); or: to = "198.18.2.1"
#   ports = "1024-65535"               # optional; default: keep the port's class, as the kernel
#   proto = "tcp"                      # optional: tcp, udp, udplite, sctp, icmp, icmpv6
#
# Port forwarding from the WAN to a LAN host, e.g.:
#
#   [[nat.dnat]]
#   dst = "198.18.2.1"                 # the public address (or prefix, or a list)
#   proto = "tcp"                      # required
#   dport = 8080                       # or "8000-8010"
#   to = "198.18.1.2"
#   to_port = 80                       # optional; a dport range maps onto to_port.. in order
#   src = ["0.0.0.0/0"]                # optional: who may use the forward
#
# The policy above sees a packet as it arrived (before NAT): a rule admitting a forward names
# the public address and port. Rules match the first packet of a connection only; the kernel
# routes the rewritten packet by its new destination. Needs queue.fail = "closed" (a packet
# that passed un-NATed would leak a LAN address or reach this node's own stack, which resets
# the connection) and queue.gso = false.
"""
