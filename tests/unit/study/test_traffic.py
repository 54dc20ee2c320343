from __future__ import annotations

import itertools
import struct
from collections import Counter
from pathlib import Path

import dpkt
import pytest

from pmct.conntrack.constants import CtState
from pmct.conntrack.core import Engine
from pmct.errors import ConfigError
from pmct.study.spec import GeneratorSpec, StudySpec
from pmct.study.traffic import Traffic, canonical_key, generate, load_pcap_dir, tcp_key


def test_deterministic_by_seed(small_spec: StudySpec, small_traffic: Traffic) -> None:
    again = generate(small_spec.traffic.generate, small_spec.seed)
    assert again.packets == small_traffic.packets and again.times == small_traffic.times
    other = generate(small_spec.traffic.generate, small_spec.seed + 1)
    assert other.packets != small_traffic.packets


def test_time_ordered_and_indexed(small_traffic: Traffic) -> None:
    t = small_traffic.times
    assert all(a <= b for a, b in itertools.pairwise(t))
    n_tcp = 0
    for key, idx in small_traffic.sessions.items():
        assert idx == sorted(idx)
        for i in idx:
            k = tcp_key(small_traffic.packets[i])
            assert k is not None and canonical_key(k) == key
        n_tcp += len(idx)
    assert n_tcp == sum(1 for d in small_traffic.packets if d[9] == 6)
    key, idx = next(iter(small_traffic.sessions.items()))
    assert small_traffic.next_packets(key, idx[1], 2) == idx[1:3]
    assert small_traffic.next_packets(b"nope", 0, 2) == []


def test_checksums_are_valid(small_traffic: Traffic) -> None:
    for data in small_traffic.packets[:2000]:
        ip2 = dpkt.ip.IP(data)
        ip2.sum = 0
        ip2.data.sum = 0
        rebuilt = bytes(ip2)
        assert rebuilt == data, "dpkt computes the same IP and L4 checksums"


def test_the_engine_accepts_every_packet(small_traffic: Traffic) -> None:
    """The kernel's full TCP window tracking finds nothing invalid in generated flows."""
    e = Engine()
    verdicts = Counter(
        e.process_ip(d, t)[0]
        for t, d in zip(small_traffic.times, small_traffic.packets, strict=True)
    )
    assert set(verdicts) == {CtState.NEW, CtState.ESTABLISHED}, e.invalid_reasons
    protos = Counter(d[9] for d in small_traffic.packets)
    assert set(protos) == {1, 6, 17}


def test_mix_follows_the_spec() -> None:
    tr = generate(GeneratorSpec(flows=200, duration=5.0, tcp=0, udp=0, icmp=1), 5)
    assert {d[9] for d in tr.packets} == {1} and not tr.sessions


def _write_pcap(path: Path, pkts: list[tuple[float, bytes]]) -> None:
    with open(path, "wb") as f:
        w = dpkt.pcap.Writer(f, linktype=dpkt.pcap.DLT_RAW)
        for ts, data in pkts:
            w.writepkt(data, ts=ts)


def test_pcap_folder_overlaid_from_zero(tmp_path: Path, small_traffic: Traffic) -> None:
    a = list(zip(small_traffic.times[:50], small_traffic.packets[:50], strict=True))
    b = list(zip(small_traffic.times[50:80], small_traffic.packets[50:80], strict=True))
    _write_pcap(tmp_path / "a.pcap", [(t + 1000.0, d) for t, d in a])
    _write_pcap(tmp_path / "b.pcap", [(t + 5000.0, d) for t, d in b])
    (tmp_path / "notes.txt").write_text("ignored")
    tr = load_pcap_dir(tmp_path)
    assert len(tr) == 80 and tr.flows == 2 and tr.start == 0.0
    assert sorted(tr.packets) == sorted(small_traffic.packets[:80])


def test_pcap_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no \.pcap"):
        load_pcap_dir(tmp_path)
    with pytest.raises(ConfigError, match="not a folder"):
        load_pcap_dir(tmp_path / "x")


def test_tcp_key_ignores_other_packets() -> None:
    assert tcp_key(b"\x45" + bytes(10)) is None
    frag = bytearray(40)
    frag[0], frag[9] = 0x45, 6
    struct.pack_into("!H", frag, 6, 0x2000)  # more fragments
    assert tcp_key(bytes(frag)) is None
