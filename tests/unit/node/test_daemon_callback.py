"""The per-packet path of the daemon with a fake NFQUEUE packet: roles, policy, marks, fail mode.

No root and no kernel: the callback is built from a Daemon that was never set up.
"""

from __future__ import annotations

from typing import Any

import pytest
from pktbuild import ACK, SYN, tcp4

from pmct.config import parse_config
from pmct.node.daemon import Daemon
from pmct.node.forwarding import Role

LAN, WAN = "198.18.1.2", "198.18.2.2"


class FakePacket:
    """What the callback uses of netfilterqueue.Packet."""

    def __init__(self, data: bytes, indev: int = 0, mark: int = 0) -> None:
        self.data = data
        self.indev = indev
        self.mark = mark
        self.verdict: str | None = None

    def get_payload(self) -> bytes:
        return self.data

    def get_mark(self) -> int:
        return self.mark

    def set_mark(self, m: int) -> None:
        self.mark = m

    def set_payload(self, data: bytes) -> None:
        self.data = data

    def accept(self) -> None:
        self._set("accept")

    def drop(self) -> None:
        self._set("drop")

    def _set(self, v: str) -> None:
        if self.verdict is not None:
            raise RuntimeError("verdict already given")
        self.verdict = v


STRICT = """
[queue]
fail = "{fail}"
[policy]
ctstate_mark = {mark}
[[policy.rule]]
ctstate = ["established", "related"]
action = "accept"
[[policy.rule]]
ctstate = "invalid"
action = "drop"
[[policy.rule]]
ctstate = "new"
in = "lan0"
proto = "tcp"
syn = true
action = "accept"
[[policy.rule]]
ctstate = "new"
in = "wan0"
action = "reject"
"""


def make(fail: str = "open", mark: bool = False, role: Role = Role.ACTIVE) -> tuple[Daemon, Any]:
    d = Daemon(parse_config(STRICT.format(fail=fail, mark=str(mark).lower())))
    d.ifnames.update({1: "lan0", 2: "wan0"})
    cb = d._make_callback()
    d._next_service = float("inf")  # no housekeeping in these tests
    d._set_verdicts(role)
    d.role = role
    return d, cb


def handshake() -> list[tuple[bytes, int]]:
    return [
        (tcp4(40000, 80, SYN, 100, 0, src=LAN, dst=WAN), 1),
        (tcp4(80, 40000, SYN | ACK, 500, 101, src=WAN, dst=LAN), 2),
        (tcp4(40000, 80, ACK, 101, 501, src=LAN, dst=WAN), 1),
    ]


def feed(d: Daemon, cb: Any, pkts: list[tuple[bytes, int]]) -> list[str | None]:
    out = []
    for data, idx in pkts:
        p = FakePacket(data, idx)
        cb(p)
        out.append(p.verdict)
    return out


def test_active_node_applies_the_policy() -> None:
    d, cb = make()
    assert feed(d, cb, handshake()) == ["accept", "accept", "accept"]
    # a mid-stream packet of an unknown connection: picked up as NEW (tcp_loose) but no SYN
    assert feed(d, cb, [(tcp4(40001, 80, ACK, 1, 1, src=LAN, dst=WAN), 1)]) == ["drop"]
    assert d.actions == [1, 3, 0]
    assert d.packets == 4


def test_reject_is_accept_with_the_reject_mark() -> None:
    d, cb = make()
    p = FakePacket(tcp4(5000, 22, SYN, src=WAN, dst=LAN), 2)
    cb(p)
    assert p.verdict == "accept" and p.mark == 0x80000000
    assert d.actions[2] == 1


def test_passive_node_tracks_and_drops_everything() -> None:
    d, cb = make(role=Role.PASSIVE)
    assert feed(d, cb, handshake()) == ["drop", "drop", "drop"]
    assert len(d.engine.table) == 1
    (conn,) = list(d.engine.table)
    assert conn.state == 3  # ESTABLISHED: the passive tracked the handshake
    d._set_verdicts(Role.ACTIVE)  # promote: the next packet of the stream passes
    assert feed(d, cb, [(tcp4(80, 40000, ACK, 501, 101, src=WAN, dst=LAN), 2)]) == ["accept"]


def test_ctstate_mark_export() -> None:
    _d, cb = make(mark=True)
    marks = []
    for data, idx in handshake():
        p = FakePacket(data, idx, mark=0x1200)
        cb(p)
        marks.append(p.mark)
    assert marks == [0x1208, 0x1202, 0x1202]  # new, established, established (nft bits)


@pytest.mark.parametrize(("fail", "verdict"), [("open", "accept"), ("closed", "drop")])
def test_unparsable_packets_follow_the_fail_mode(fail: str, verdict: str) -> None:
    d, cb = make(fail=fail)
    garbage = b"\x45\x00\x00\x08" + b"\x00" * 4  # IPv4 with total length 8 < header: ip_rcv drops
    p = FakePacket(garbage, 1)
    cb(p)
    assert p.verdict == verdict
    assert d.errors["unparsed"] == 1


@pytest.mark.parametrize(("fail", "verdict"), [("open", "accept"), ("closed", "drop")])
def test_an_internal_error_never_escapes_and_follows_the_fail_mode(fail: str, verdict: str) -> None:
    d, cb = make(fail=fail)

    class Broken(FakePacket):
        def get_payload(self) -> bytes:
            raise MemoryError("simulated")

    p = Broken(b"", 1)
    cb(p)  # must not raise
    assert p.verdict == verdict
    assert d.errors["callback"] == 1


def test_passive_error_always_drops() -> None:
    _d, cb = make(fail="open", role=Role.PASSIVE)

    class Broken(FakePacket):
        def get_payload(self) -> bytes:
            raise ValueError("simulated")

    p = Broken(b"", 1)
    cb(p)
    assert p.verdict == "drop"


def test_status_shape_and_rendering() -> None:
    from pmct.node.metrics import render_prometheus, render_stats, render_status

    d, cb = make()
    feed(d, cb, handshake())
    st = d.status()
    assert st["conntrack"]["entries"] == 1
    assert st["conntrack"]["by_proto_state"] == {"tcp": {"ESTABLISHED": 1}}
    assert st["verdicts"] == {"accept": 3, "drop": 0, "reject": 0}
    assert st["ctstates"]["new"] == 1 and st["ctstates"]["established"] == 2
    assert [r["hits"] for r in st["rules"]] == [2, 0, 1, 0]
    text = render_status(st)
    assert text.startswith("pmct pmct: active, up ")
    assert "tcp     ESTABLISHED 1" in text
    assert render_stats(st).startswith("cpu=0   \tfound=0 invalid=0 insert=1 ")
    prom = render_prometheus(st)
    assert 'pmct_nf_conntrack_entries{node="pmct"} 1' in prom
    assert 'pmct_connections{node="pmct",protocol="tcp",state="ESTABLISHED"} 1' in prom
    assert 'pmct_verdicts_total{node="pmct",action="accept"} 3' in prom


def test_control_handler_commands() -> None:
    d, cb = make()
    feed(d, cb, handshake())
    res = d.handle({"cmd": "conntrack"})
    assert len(res["lines"]) == 1 and "ESTABLISHED" in res["lines"][0]
    assert res["entries"][0]["orig"] == [LAN, WAN, 40000, 80]
    assert d.handle({"cmd": "ping"})["ready"] is False  # never set up
    with pytest.raises(ValueError, match="unknown command"):
        d.handle({"cmd": "reboot"})


@pytest.mark.parametrize("role", [Role.ACTIVE, Role.PASSIVE])
def test_nat_hook_rewrites_only_accepted_packets_of_the_active_node(role: Role) -> None:
    d, cb = make(role=role)
    calls: list[tuple[int, int]] = []

    def nat(data: bytes, ct: int, direction: int, conn: Any) -> bytes | None:
        calls.append((ct, direction))
        return b"rewritten" if direction == 0 else None

    d.dp.nat = nat
    pkts = [*handshake(), (tcp4(40001, 80, ACK, 1, 1, src=LAN, dst=WAN), 1)]  # last: dropped
    out = [FakePacket(data, idx) for data, idx in pkts]
    for p in out:
        cb(p)
    if role is Role.PASSIVE:
        assert calls == [] and [p.verdict for p in out] == ["drop"] * 4
        return
    assert calls == [(1, 0), (2, 1), (2, 0)]  # NEW orig, ESTABLISHED reply, ESTABLISHED orig
    assert [p.verdict for p in out] == ["accept", "accept", "accept", "drop"]
    assert [p.data == b"rewritten" for p in out] == [True, False, True, False]
