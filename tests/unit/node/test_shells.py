"""The node's shells without the kernel: control socket, state file, NFQUEUE config message,
announcement frames, the silence ruleset text, /proc queue stats parsing."""

from __future__ import annotations

import json
import os
import socket
import struct
import threading
from pathlib import Path

import dpkt
import pytest

from pmct.node.control import ControlError, ControlServer, request, subscribe
from pmct.node.forwarding import Role, StateFile
from pmct.node.netfilter import Silence
from pmct.node.netlink import arp_announcement, unsolicited_na
from pmct.node.nfqueue import NFQA_CFG_F_FAIL_OPEN, config_flags_message, read_queue_stats

# ---------------------------------------------------------------------------- control socket


def serve(server: ControlServer, stop: threading.Event) -> None:
    while not stop.is_set():
        server.service(0.05)


@pytest.fixture
def server(tmp_path: Path):  # type: ignore[no-untyped-def]
    def handler(req: dict[str, object]) -> object:
        if req["cmd"] == "echo":
            return req.get("value")
        if req["cmd"] == "bad":
            raise ValueError("bad value")
        if req["cmd"] == "boom":
            raise KeyError("bug")
        raise ValueError(f"unknown command {req['cmd']!r}")

    srv = ControlServer(str(tmp_path / "c.sock"), handler, allowed_uid=os.getuid())
    stop = threading.Event()
    t = threading.Thread(target=serve, args=(srv, stop), daemon=True)
    t.start()
    yield srv
    stop.set()
    t.join()
    srv.close()


def test_request_response(server: ControlServer) -> None:
    assert request(server.path, "echo", value=[1, "two"]) == [1, "two"]
    with pytest.raises(ControlError, match="bad value"):
        request(server.path, "bad")
    with pytest.raises(ControlError, match="internal error: KeyError"):
        request(server.path, "boom")
    assert request(server.path, "echo", value="still alive") == "still alive"


def test_socket_file_is_private(server: ControlServer) -> None:
    assert os.stat(server.path).st_mode & 0o777 == 0o600


def test_garbage_lines_get_errors(server: ControlServer) -> None:
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(server.path)
        s.sendall(b"not json\n[1]\n")
        f = s.makefile("rb")
        first, second = json.loads(f.readline()), json.loads(f.readline())
    assert first["ok"] is False and "bad request" in first["error"]
    assert second["ok"] is False and '"cmd"' in second["error"]


def test_second_server_refuses_a_live_socket(server: ControlServer) -> None:
    with pytest.raises(ControlError, match="another pmct daemon"):
        ControlServer(server.path, lambda r: None)


def test_stale_socket_file_is_replaced(tmp_path: Path) -> None:
    path = str(tmp_path / "stale.sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)
    s.close()  # the file stays, nobody listens
    srv = ControlServer(path, lambda r: None, allowed_uid=os.getuid())
    srv.close()
    assert not os.path.exists(path)


def test_other_uids_are_refused(tmp_path: Path) -> None:
    srv = ControlServer(str(tmp_path / "r.sock"), lambda r: "x", allowed_uid=os.getuid() + 1)
    stop = threading.Event()
    t = threading.Thread(target=serve, args=(srv, stop), daemon=True)
    t.start()
    try:
        with pytest.raises(ControlError):
            request(srv.path, "echo", timeout=2)
    finally:
        stop.set()
        t.join()
        srv.close()


def test_events_are_streamed_to_subscribers(server: ControlServer) -> None:
    got: list[dict[str, object]] = []
    it = subscribe(server.path)
    ready = threading.Event()

    def reader() -> None:
        for ev in it:
            got.append(ev)
            ready.set()
            if len(got) == 2:
                return

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    for _ in range(100):
        if server.subscribers:
            break
        threading.Event().wait(0.02)
    server.publish({"event": "NEW", "line": "a"})
    server.publish({"event": "DESTROY", "line": "b"})
    t.join(5)
    assert [e["event"] for e in got] == ["NEW", "DESTROY"]


def test_no_daemon() -> None:
    with pytest.raises(ControlError, match="does not exist"):
        request("/nonexistent/pmct.sock", "ping")


# ---------------------------------------------------------------------------- state file


def test_state_file_round_trip(tmp_path: Path) -> None:
    sf = StateFile(str(tmp_path / "role"))
    sf.write(Role.PASSIVE)
    assert (tmp_path / "role").read_text() == "passive\n"
    assert sf.poll() is None  # our own write is no request
    for text, want in (("1\n", Role.ACTIVE), ("0", Role.PASSIVE), ("active\n", Role.ACTIVE)):
        (tmp_path / "role").write_text(text)
        assert sf.poll() is want
        sf.write(want)
    (tmp_path / "role").write_text("")
    assert sf.poll() is None  # a writer caught between truncate and write
    (tmp_path / "role").write_text("maybe\n")
    assert sf.poll() is None
    assert sf.poll() is None  # warned once, not again
    sf.remove()
    assert not (tmp_path / "role").exists()
    assert sf.poll() is None


# ---------------------------------------------------------------------------- wire formats


def test_nfqueue_config_flags_message() -> None:
    msg = config_flags_message(7, NFQA_CFG_F_FAIL_OPEN, 0x5, seq=9)
    length, mtype, flags, seq, pid = struct.unpack_from("=IHHII", msg)
    assert length == len(msg) == 16 + 4 + 8 + 8
    assert mtype == (3 << 8) | 2  # NFNL_SUBSYS_QUEUE, NFQNL_MSG_CONFIG
    assert flags == 0x1 | 0x4 and seq == 9 and pid == 0
    family, version, res_id = struct.unpack_from("!BBH", msg, 16)
    assert (family, version, res_id) == (0, 0, 7)  # AF_UNSPEC, NFNETLINK_V0, queue number
    # NFQA_CFG_FLAGS (5) then NFQA_CFG_MASK (4), big-endian u32 payloads
    assert struct.unpack_from("=HH", msg, 20) == (8, 5)
    assert struct.unpack_from("!I", msg, 24) == (1,)
    assert struct.unpack_from("=HH", msg, 28) == (8, 4)
    assert struct.unpack_from("!I", msg, 32) == (5,)


def test_gratuitous_arp_frame() -> None:
    eth = dpkt.ethernet.Ethernet(arp_announcement("02:00:00:c1:00:01", "198.18.1.1"))
    assert eth.dst == b"\xff" * 6 and eth.src == bytes.fromhex("0200 00c1 0001")
    arp = eth.data
    assert isinstance(arp, dpkt.arp.ARP)
    assert arp.op == 1 and arp.spa == arp.tpa == socket.inet_aton("198.18.1.1")
    assert arp.sha == bytes.fromhex("020000c10001")


def test_unsolicited_na_frame_has_a_valid_checksum() -> None:
    frame = unsolicited_na("02:00:00:c1:00:01", "2001:db8::1")
    eth = dpkt.ethernet.Ethernet(frame)
    ip6 = eth.data
    assert eth.dst == bytes.fromhex("333300000001")
    assert ip6.hlim == 255 and ip6.nxt == 58
    icmp = bytes(frame[14 + 40 :])
    assert icmp[0] == 136
    flags = struct.unpack_from("!I", icmp, 4)[0]
    assert flags == 0xA0000000  # Router + Override, not Solicited
    pseudo = ip6.src + ip6.dst + struct.pack("!I3xB", len(icmp), 58)
    data = pseudo + icmp
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    assert total == 0xFFFF  # the checksum verifies
    assert icmp[24:26] == b"\x02\x01" and icmp[26:32] == bytes.fromhex("020000c10001")


def test_silence_ruleset_covers_only_the_data_interfaces() -> None:
    text = Silence(["lan0", "wan0"]).script()
    assert 'oifname { "lan0", "wan0" } drop' in text
    assert text.count("hook egress") == 2 and "sync0" not in text
    assert text.count("policy drop") == 2
    assert "ingress" not in text  # passive_capture = "queue": NFQUEUE sees the packets


def test_silence_with_the_ring_also_drops_ip_at_ingress() -> None:
    text = Silence(["lan0", "wan0"], ingress_drop=True).script()
    assert text.count("hook ingress") == 2 and text.count("meta protocol { ip, ip6 } drop") == 2
    v4 = Silence(["lan0"], ingress_drop=True, ipv6=False).script()
    assert "meta protocol ip drop" in v4 and "ip6" not in v4  # ARP still reaches the stack


def test_read_queue_stats(tmp_path: Path) -> None:
    p = tmp_path / "nfnetlink_queue"
    p.write_text("    0  12345     3 2  4016     7     9     1000  1\n    5  1 0 2 4016 0 0 1 1\n")
    st = read_queue_stats(0, str(p))
    assert st is not None
    assert (st.portid, st.waiting, st.queue_dropped, st.user_dropped, st.id_sequence) == (
        12345,
        3,
        7,
        9,
        1000,
    )
    assert read_queue_stats(1, str(p)) is None
    assert read_queue_stats(0, str(tmp_path / "missing")) is None


# ---------------------------------------------------------------------------- systemd notify


def test_sd_notify_ready_and_watchdog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pmct.node.daemon import _Systemd

    path = str(tmp_path / "notify")
    sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sink.bind(path)
    sink.settimeout(2)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    sd = _Systemd()
    assert sd.watchdog == 2.0  # ping at half the interval
    sd.notify("READY=1")
    sd.tick(100.0)
    sd.tick(101.0)  # too early for another ping
    sd.tick(102.0)
    got = [sink.recv(100) for _ in range(3)]
    assert got == [b"READY=1", b"WATCHDOG=1", b"WATCHDOG=1"]
    sink.close()


def test_no_notify_socket_is_fine(monkeypatch: pytest.MonkeyPatch) -> None:
    from pmct.node.daemon import _Systemd

    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    sd = _Systemd()
    sd.notify("READY=1")
    sd.tick(1.0)
    assert sd.watchdog == 0.0


def test_run_check_validates_the_config(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from pmct.cli import app

    good = tmp_path / "ok.toml"
    good.write_text('[node]\nname = "x"\n')
    r = CliRunner().invoke(app, ["run", "--check", "--config", str(good)])
    assert r.exit_code == 0 and "ok (x, passive)" in r.output
    bad = tmp_path / "bad.toml"
    bad.write_text("[queue]\nnum = -1\n")
    r = CliRunner().invoke(app, ["run", "--check", "--config", str(bad)])
    assert r.exit_code == 2
    assert "bad.toml:2: queue.num: must be between 0 and 65535, not -1" in r.output


# ---------------------------------------------------------------------------- netlink backend


class FakeNetlink:
    """recv hands out prepared messages; send records what the queue answered."""

    def __init__(self, messages: list[bytes]) -> None:
        self.messages = list(messages)
        self.sent: list[bytes] = []

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        if not self.messages:
            raise BlockingIOError
        return self.messages.pop(0)[:bufsize]

    def send(self, data: bytes) -> int:
        self.sent.append(bytes(data))
        return len(data)


def nla(atype: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return struct.pack("=HH", n, atype) + payload + b"\0" * (-n % 4)


def packet_message(pkt_id: int, payload: bytes, indev: int = 2, mark: int = 0) -> bytes:
    attrs = (
        nla(1, struct.pack("!IHB", pkt_id, 0x0800, 0))  # NFQA_PACKET_HDR
        + nla(3, struct.pack("!I", mark))  # NFQA_MARK
        + nla(5, struct.pack("!I", indev))  # NFQA_IFINDEX_INDEV
        + nla(10, payload)  # NFQA_PAYLOAD
    )
    body = struct.pack("!BBH", 2, 0, 0) + attrs
    return struct.pack("=IHHII", 16 + len(body), (3 << 8) | 0, 0, 0, 0) + body


def verdicts(sent: list[bytes]) -> list[tuple[str, int, int, int | None]]:
    out = []
    for m in sent:
        _, mtype, *_ = struct.unpack_from("=IHHII", m)
        kind = {(3 << 8) | 1: "one", (3 << 8) | 3: "batch"}[mtype]
        verdict, pkt_id = struct.unpack_from("!II", m, 24)
        mark = struct.unpack_from("!I", m, 36)[0] if len(m) > 32 else None
        out.append((kind, pkt_id, verdict, mark))
    return out


LAB_POLICY = """
[policy]
default = "drop"
[[policy.rule]]
ctstate = ["established", "related"]
action = "accept"
[[policy.rule]]
ctstate = "new"
in = "lan0"
action = "accept"
"""


def make_queue(messages: list[bytes], handler):  # type: ignore[no-untyped-def]
    from pmct.node.datapath import DrainStats
    from pmct.node.nfqueue import NetlinkQueue, datapath_of

    q = NetlinkQueue.__new__(NetlinkQueue)
    q.num, q.handler, q.on_error, q.burst = 0, handler, lambda: 0, 256
    q.batch_verdict, q.stats, q.dp = 1, DrainStats(), datapath_of(handler)
    q.sock = FakeNetlink(messages)  # type: ignore[assignment]
    q.bufsize = 70000
    q._qbe = socket.htons(0)
    q.flush, q._send, q._vq, q._vt = 1 << 30, None, None, None
    return q


def test_netlink_batch_verdicts_answer_every_packet_once() -> None:
    seen: list[tuple[bytes, int, int]] = []

    def handler(data: bytes, indev: int, mark: int) -> tuple[int, int, bytes | None]:
        seen.append((data, indev, mark))
        if data == b"drop":
            return (0, -1, None)
        if data == b"mark":
            return (1, mark | 0x80000000, None)
        return (1, -1, None)

    payloads = [b"a", b"drop", b"b", b"mark", b"c", b"d"]
    q = make_queue([packet_message(i + 10, p, mark=7) for i, p in enumerate(payloads)], handler)
    q.drain()
    assert [s[0] for s in seen] == payloads and {s[1:] for s in seen} == {(2, 7)}
    assert verdicts(q.sock.sent) == [  # type: ignore[attr-defined]
        ("one", 11, 0, None),  # the drop, at once
        ("one", 13, 1, 0x80000007),  # accept with a mark, at once
        ("batch", 15, 1, None),  # everything else up to id 15
    ]


def test_netlink_batch_is_flushed_every_n_packets_and_a_single_never_overtaken() -> None:
    def handler(data: bytes, indev: int, mark: int) -> tuple[int, int, bytes | None]:
        return (1, 0x10, None) if data == b"mark" else (1, -1, None)

    payloads = [b"a", b"b", b"c", b"mark", b"d", b"e", b"f", b"g"]
    for threaded in (False, True):
        q = make_queue([packet_message(i + 1, p) for i, p in enumerate(payloads)], handler)
        q.flush = 3
        if threaded:  # the verdict thread sends the same messages in the same order
            q.start_verdict_thread()
        q.drain()
        q.stop_verdict_thread()
        assert verdicts(q.sock.sent) == [  # type: ignore[attr-defined]
            ("batch", 3, 1, None),  # a, b, c: the batch is full
            ("one", 4, 1, 0x10),
            ("batch", 7, 1, None),  # d, e, f
            ("batch", 8, 1, None),  # g, at the end of the burst
        ], threaded


def test_netlink_passive_batches_drops_and_errors_follow_on_error() -> None:
    def handler(data: bytes, indev: int, mark: int) -> tuple[int, int, bytes | None]:
        if data == b"boom":
            raise RuntimeError("bug")
        return (0, -1, None)

    q = make_queue([packet_message(i, p) for i, p in enumerate([b"x", b"boom", b"y"])], handler)
    q.batch_verdict = 0
    q.on_error = lambda: 1  # a fail-open active node would accept
    q.drain()
    assert verdicts(q.sock.sent) == [("one", 1, 1, None), ("batch", 2, 0, None)]  # type: ignore[attr-defined]


def test_netlink_ignores_non_packet_messages() -> None:
    ack = struct.pack("=IHHIIi", 36, 2, 0, 0, 0, 0) + b"\0" * 16
    q = make_queue([ack], lambda d, i, m: (1, -1, None))
    q.drain()
    assert q.sock.sent == []  # type: ignore[attr-defined]


def test_netlink_rewritten_payload_gets_its_own_verdict_with_nfqa_payload() -> None:
    def handler(data: bytes, indev: int, mark: int) -> tuple[int, int, bytes | None]:
        if data == b"nat":
            return (1, -1, b"NATTED!")  # 7 bytes: the attribute is padded to 12
        if data == b"natmark":
            return (1, 0x10, b"M")
        return (1, -1, None)

    payloads = [b"a", b"nat", b"b", b"natmark", b"c"]
    q = make_queue([packet_message(i + 1, p) for i, p in enumerate(payloads)], handler)
    q.drain()
    sent = q.sock.sent  # type: ignore[attr-defined]
    assert [(k, i, v) for k, i, v, _ in verdicts(sent)] == [
        ("one", 2, 1),
        ("one", 4, 1),
        ("batch", 5, 1),
    ]
    one, two = sent[0], sent[1]
    assert struct.unpack_from("=I", one)[0] == len(one) == 20 + 12 + 12
    assert struct.unpack_from("=HH", one, 32) == (11, 10)  # NFQA_PAYLOAD, 4 + 7 bytes
    assert one[36:43] == b"NATTED!"
    # verdict header, NFQA_MARK, NFQA_PAYLOAD
    assert struct.unpack_from("=HH", two, 32) == (8, 3) and struct.unpack_from("!I", two, 36) == (
        0x10,
    )
    assert struct.unpack_from("=HH", two, 40) == (5, 10) and two[44:45] == b"M"


def test_netlink_queue_drives_the_daemon_datapath() -> None:
    """The daemon's handler is Datapath.handle: the drain loop calls it directly and the
    verdicts are the policy's (lab-like strict policy: NEW only from lan0)."""
    from pktbuild import ACK, SYN, tcp4

    from pmct.config import parse_config
    from pmct.node.daemon import Daemon
    from pmct.node.forwarding import Role

    d = Daemon(parse_config(LAB_POLICY))
    d.ifnames.update({1: "lan0", 2: "wan0"})
    d._set_verdicts(Role.ACTIVE)
    lan, wan = "198.18.1.2", "198.18.2.2"
    pkts = [
        (tcp4(40000, 80, SYN, 100, 0, src=lan, dst=wan), 1),
        (tcp4(80, 40000, SYN | ACK, 500, 101, src=wan, dst=lan), 2),
        (tcp4(40000, 80, ACK, 101, 501, src=lan, dst=wan), 1),
        (tcp4(5000, 22, SYN, 1, 0, src=wan, dst=lan), 2),  # NEW from wan0: default drop
        (tcp4(80, 40000, ACK, 501, 101, src=wan, dst=lan), 2),
    ]
    q = make_queue(
        [packet_message(i + 1, p, indev=x) for i, (p, x) in enumerate(pkts)], d._make_handler()
    )
    assert q.dp is d.dp
    assert q.drain() == 5
    assert verdicts(q.sock.sent) == [("one", 4, 0, None), ("batch", 5, 1, None)]  # type: ignore[attr-defined]
    assert d.packets == 5 and d.actions == [1, 4, 0]
    assert (q.stats.packets, q.stats.batches, q.stats.singles) == (5, 1, 1)
