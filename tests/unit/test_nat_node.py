"""NAT in the node without the kernel: the [nat] config section, the masquerade resolution,
the engine hook on both nodes, and the datapath's NAT step (pmct/node/natshell.py)."""

from __future__ import annotations

import socket
import textwrap

import dpkt
import pytest
from pktbuild import ACK, PSH, SYN, tcp4, udp4

from pmct.config import parse_config
from pmct.conntrack.constants import CtState, Status
from pmct.conntrack.core import Engine
from pmct.conntrack.helpers.ftp import FTP
from pmct.errors import ConfigError
from pmct.nat.rules import parse_nat
from pmct.node.datapath import DROP, Datapath
from pmct.node.natshell import NatShell, nat_payload, resolve_masquerade
from pmct.node.policy import CTSTATE_MARK_BITS

LAN_HOST, SERVER, PUBLIC = "198.18.1.2", "198.18.2.2", "198.18.2.1"

NODE = textwrap.dedent(
    f"""\
    [interfaces]
    data = ["lan0", "wan0"]

    [cluster.interface.wan0]
    addresses = ["{PUBLIC}/24"]

    [queue]
    fail = "closed"

    [nat]
    seed = "pair-1"

    [[nat.snat]]
    src = ["198.18.1.0/24"]
    masquerade = "wan0"
    ports = "30000-30099"

    [[nat.dnat]]
    dst = "{PUBLIC}"
    proto = "tcp"
    dport = 8080
    to = "{LAN_HOST}"
    to_port = 80
    """
)


def shell(text: str = NODE) -> NatShell:
    cfg = parse_config(text, "node.toml")
    return NatShell(cfg.nat, cfg.cluster)


@pytest.fixture(autouse=True)
def _no_ftp_hook():  # type: ignore[no-untyped-def]
    """NatShell.attach installs the FTP helper's NAT hook (a class attribute): remove it."""
    yield
    NatShell.detach(Engine())
    assert FTP.nat_hook is None


# ---------------------------------------------------------------------------- config


def test_nat_section_parsed() -> None:
    cfg = parse_config(NODE, "node.toml")
    assert cfg.nat.enabled and cfg.nat.seed == b"pair-1"
    (s,) = cfg.nat.snat
    assert s.masquerade == "wan0" and s.to == () and s.ports == (30000, 30099)
    (d,) = cfg.nat.dnat
    assert d.to == socket.inet_aton(LAN_HOST) and d.dports == (8080, 8080) and d.to_port == 80


def test_default_config_has_nat_off() -> None:
    assert not parse_config("", "x").nat.enabled


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (('ports = "30000-30099"', 'ports = "30099-30000"'), "node.toml:16: nat.snat[0].ports: "),
        (('masquerade = "wan0"', 'masquerade = "eth9"'), "node.toml:15: nat.snat[0].masquerade: "),
        (("to_port = 80", "to_port = 80\ncolour = 1"), "node.toml:24: nat.dnat[0].colour: unknown"),
        (('to = "198.18.1.2"', 'to = "lan-host"'), "node.toml:22: nat.dnat[0].to: not an addr"),
        (('fail = "closed"', 'fail = "open"'), 'node.toml:10: nat: needs queue.fail = "closed"'),
        (
            ('fail = "closed"', 'fail = "closed"\nbackend = "netlink"\ngso = true'),
            "nat: needs queue.gso = false",
        ),
    ],
)
def test_nat_errors_name_key_and_line(edit: tuple[str, str], expected: str) -> None:
    text = NODE.replace(*edit)
    assert text != NODE
    with pytest.raises(ConfigError) as e:
        parse_config(text, "node.toml")
    assert expected in str(e.value)


def test_seed_alone_with_fail_open_is_fine() -> None:
    # no rule: NAT is off, so the fail mode does not matter
    cfg = parse_config('[nat]\nseed = "x"\n', "x")
    assert not cfg.nat.enabled and cfg.queue.fail_open


# ---------------------------------------------------------------------------- masquerade


def test_masquerade_takes_the_cluster_address_first() -> None:
    cfg = parse_config(NODE, "x")
    asked: list[str] = []

    def lookup(name: str) -> list[bytes]:
        asked.append(name)
        return [socket.inet_aton("203.0.113.7")]

    resolved, addrs = resolve_masquerade(cfg.nat, cfg.cluster, lookup)
    assert addrs == {"wan0": [socket.inet_aton(PUBLIC)]} and asked == []
    assert resolved.snat[0].to == (socket.inet_aton(PUBLIC),)


def test_masquerade_falls_back_to_the_interface_addresses() -> None:
    cfg = parse_config(NODE.replace(f'addresses = ["{PUBLIC}/24"]', "addresses = []"), "x")
    own = socket.inet_aton("203.0.113.7")
    resolved, addrs = resolve_masquerade(cfg.nat, cfg.cluster, lambda name: [own])
    assert addrs == {"wan0": [own]} and resolved.snat[0].to == (own,)


def test_masquerade_without_address_matches_nothing() -> None:
    cfg = parse_config(NODE.replace(f'addresses = ["{PUBLIC}/24"]', "addresses = []"), "x")
    sh = NatShell(cfg.nat, cfg.cluster, lambda name: [])
    e = Engine()
    sh.attach(e)
    st, d, conn = e.process_ip(tcp4(40000, 443, SYN, src=LAN_HOST, dst=SERVER), 1.0)
    assert conn is not None and not conn.status & (Status.SRC_NAT | Status.DST_NAT)
    assert nat_payload(tcp4(40000, 443, SYN, src=LAN_HOST, dst=SERVER), st, d, conn) is None


# ---------------------------------------------------------------------------- both nodes


def traffic() -> list[bytes]:
    """Outbound connections from several ports (all remapped into 30000-30099, some
    clashing) and inbound ones through the forward."""
    out = []
    for i in range(40):
        out.append(tcp4(40000 + i % 5, 443 + i % 2, SYN, seq=i, src=LAN_HOST, dst=SERVER))
        out.append(udp4(5000 + i, 53, src=LAN_HOST, dst=SERVER))
        out.append(tcp4(50000 + i, 8080, SYN, src=f"203.0.113.{1 + i}", dst=PUBLIC))
    return out


def test_active_and_passive_compute_the_same_bindings() -> None:
    a, b = Engine(), Engine()
    shell().attach(a)
    shell().attach(b)
    for i, p in enumerate(traffic()):
        va = a.process_ip(p, 1.0 + i * 0.001)
        vb = b.process_ip(p, 1.0 + i * 0.001 + 0.0003)
        assert va[:2] == vb[:2]
        assert nat_payload(p, *va) == nat_payload(p, *vb)
    ta = sorted((c.key, c.rkey, c.status) for c in a.conns())
    tb = sorted((c.key, c.rkey, c.status) for c in b.conns())
    assert ta == tb
    snat = [r for k, r, s in ta if s & Status.SRC_NAT]
    dnat = [r for k, r, s in ta if s & Status.DST_NAT]
    assert len(snat) == 50 and len(dnat) == 40  # 10 TCP + 40 UDP outbound, 40 forwarded
    assert all(30000 <= int.from_bytes(r[10:12]) <= 30099 for r in snat if len(r) == 12)


def test_attach_installs_the_ftp_hook() -> None:
    sh = shell()
    e = Engine()
    sh.attach(e)
    assert e.nat_bind is not None and FTP.nat_hook is sh.ftp
    NatShell.detach(e)
    assert e.nat_bind is None and FTP.nat_hook is None


# ---------------------------------------------------------------------------- the datapath


def datapath(active: bool) -> tuple[Datapath, Engine]:
    e = Engine()
    sh = shell()
    sh.attach(e)
    dp = Datapath(
        e, lambda ct, d, indev, data, oif: 1, {1: "lan0", 2: "wan0"}, ctstate_bits=CTSTATE_MARK_BITS
    )
    dp.nat = sh.packet
    dp.active = active
    return dp, e


def tcp(
    sport: int, dport: int, flags: int, *, src: str, dst: str, seq: int = 0, ack: int = 0
) -> bytes:
    """A TCP segment with correct checksums (pktbuild leaves the TCP checksum 0)."""
    t = dpkt.tcp.TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack, win=8192)
    ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=6, ttl=64, data=t)
    ip.len = 20 + len(bytes(t))
    return bytes(ip)


def fields(data: bytes) -> tuple[str, str, int, int]:
    ip = dpkt.ip.IP(data)
    return (socket.inet_ntoa(ip.src), socket.inet_ntoa(ip.dst), ip.data.sport, ip.data.dport)


def valid(data: bytes) -> bool:
    """The IPv4 header checksum and the TCP checksum (with its pseudo header) verify."""
    ip = dpkt.ip.IP(data)
    seg = data[20 : ip.len]
    pseudo = ip.src + ip.dst + bytes((0, ip.p)) + len(seg).to_bytes(2, "big")
    return dpkt.in_cksum(data[:20]) == 0 and dpkt.in_cksum(pseudo + seg) == 0


def test_active_datapath_rewrites_through_the_verdict() -> None:
    dp, e = datapath(active=True)
    syn = tcp(40000, 443, SYN, seq=1, src=LAN_HOST, dst=SERVER)
    v, _m, out = dp.handle(syn, 1, 0)
    assert v == 1 and out is not None
    src, dst, sport, dport = fields(out)
    assert (src, dst, dport) == (PUBLIC, SERVER, 443) and 30000 <= sport <= 30099
    assert valid(out)
    reply = tcp(443, sport, SYN | ACK, seq=7, ack=2, src=SERVER, dst=PUBLIC)
    v, _m, back = dp.handle(reply, 2, 0)
    assert v == 1 and back is not None and fields(back) == (SERVER, LAN_HOST, 443, 40000)
    assert valid(back)
    # an entry without NAT: no payload, the plain batchable accept
    local = tcp(40000, 22, SYN, src=LAN_HOST, dst="198.18.1.1")
    e.nat_bind = None
    assert dp.handle(local, 1, 0) == (1, -1, None)


def test_forward_through_the_datapath() -> None:
    dp, _ = datapath(active=True)
    v, _m, out = dp.handle(tcp(50000, 8080, SYN, src="203.0.113.9", dst=PUBLIC), 2, 0)
    assert v == 1 and out is not None and fields(out) == ("203.0.113.9", LAN_HOST, 50000, 80)
    v, _m, back = dp.handle(tcp(80, 50000, SYN | ACK, ack=1, src=LAN_HOST, dst="203.0.113.9"), 1, 0)
    assert back is not None and fields(back) == (PUBLIC, "203.0.113.9", 8080, 50000)
    assert valid(out) and valid(back)


def test_passive_datapath_tracks_and_binds_but_never_rewrites() -> None:
    dp, e = datapath(active=False)
    syn = tcp4(40000, 443, SYN, seq=1, src=LAN_HOST, dst=SERVER)
    assert dp.handle(syn, 1, 0) == DROP
    (conn,) = list(e.conns())
    assert conn.status & Status.SRC_NAT
    data = tcp4(40000, 443, PSH | ACK, seq=2, payload=b"x", src=LAN_HOST, dst=SERVER)
    assert dp.handle(data, 1, 0) == DROP


def test_nat_payload_skips_plain_entries() -> None:
    e = Engine()
    p = tcp4(40000, 443, SYN)
    st, d, conn = e.process_ip(p, 1.0)
    assert st == CtState.NEW and nat_payload(p, st, d, conn) is None
    assert nat_payload(p, st, d, None) is None


def test_rules_are_the_cores() -> None:
    # the node passes the section to the core parser unchanged
    cfg = parse_config(NODE, "x")
    assert cfg.nat == parse_nat(
        {
            "seed": "pair-1",
            "snat": [{"src": ["198.18.1.0/24"], "masquerade": "wan0", "ports": "30000-30099"}],
            "dnat": [{"dst": PUBLIC, "proto": "tcp", "dport": 8080, "to": LAN_HOST, "to_port": 80}],
        }
    )


def test_example_nat_configs_load_and_agree() -> None:
    from pathlib import Path

    from pmct.config import load_config

    examples = Path(__file__).resolve().parents[2] / "configs" / "examples"
    a = load_config(examples / "nat-fw-a.toml")
    b = load_config(examples / "nat-fw-b.toml")
    assert a.nat.enabled and a.nat == b.nat and a.policy == b.policy
    assert (a.node.role, b.node.role) == ("active", "passive")
    # both nodes resolve the masquerade to the same cluster address
    assert NatShell(a.nat, a.cluster).config == NatShell(b.nat, b.cluster).config
