"""The compiled engine (mypyc) and the interpreted sources give the same verdicts.

The test suite runs against whatever is importable: compiled modules when
scripts/build_accel.py built them (CI does), else the sources. This test runs the *sources* in
a subprocess next to the compiled build and compares the two, row by row, on real traces.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pmct.accel import compiled_modules
from pmct.fidelity import default_traces
from pmct.replay import format_tsv, replay_capture

REPO = Path(__file__).resolve().parents[2]
TRACES = (
    "tcp_edge_synth.pcap",
    "mix_small.pcap",
    "sctp.pcap",
    "frag_dns_v4v6.pcap",
    "ipv6_mix.pcap",
    "tcp_simopen_5whs.pcap",
    "icmp_unreach_udp.pcapng",
)

_SCRIPT = """
import sys
from pmct.replay import format_tsv, replay_capture
for path in sys.argv[1:]:
    for line in format_tsv(replay_capture(path, clock="paced")):
        print(line)
"""


def test_interpreted_sources_match_the_compiled_engine(tmp_path: Path) -> None:
    if not compiled_modules():
        pytest.skip("the engine is not compiled here (scripts/build_accel.py not run)")
    src = tmp_path / "src"
    shutil.copytree(REPO / "pmct", src / "pmct", ignore=shutil.ignore_patterns("*.so"))
    paths = [str(p) for p in default_traces() if p.name in TRACES]
    assert len(paths) == len(TRACES)
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT, *paths],
        cwd=src,
        env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout.splitlines()
    here = [line for p in paths for line in format_tsv(replay_capture(p, clock="paced"))]
    probe = subprocess.run(
        [sys.executable, "-c", "import pmct.conntrack.core as c; print(c.__file__)"],
        cwd=src,
        env={"PYTHONPATH": str(src)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert probe.strip().endswith("core.py"), "the subprocess did not run the sources"
    assert len(here) > 500
    assert out == here


_SYNC_SCRIPT = """
import hashlib, random
from pmct.conntrack.keys import IPPROTO_UDP
from pmct.sync.protocol import Role, SyncConfig, SyncProtocol
from pmct.sync.records import conn_to_record
from pmct.sync.sim import sample_conn
from pmct.sync.table import DictTable

# ct_sync end to end, deterministic: a master walks a mixed table to a slave over a link that
# drops every 7th datagram (NACK, retransmission), then streams replicate-mode changes;
# everything either side sends, every counter and the slave's table are printed.
def conns():
    out = []
    for i in range(3000):
        c = sample_conn(i, v6=i % 5 == 0, proto=IPPROTO_UDP if i % 7 == 0 else 6,
                        expires=1000.0 + i)
        c.mark = i % 3
        out.append(c)
    return out
KEY = b"0123456789abcdef0123456789abcdef"
for mode, window in (("concurrent", False), ("replicate", True)):
    mt, st = DictTable(), DictTable()
    for c in conns():
        mt.add(c)
    m = SyncProtocol(SyncConfig(1, frozenset({2}), mode=mode, hmac_key=KEY, send_window=window,
                                initsync_rate=40000.0, walk_budget=300),
                     mt, epoch=7, now=0.0, role=Role.MASTER, initial_seq=0xFFFFFF00)
    s = SyncProtocol(SyncConfig(2, frozenset({1}), mode=mode, hmac_key=KEY), st, epoch=9,
                     now=0.0, initial_seq=5)
    h = hashlib.sha256()
    n = 0
    now = 0.0
    rng = random.Random(3)
    for step in range(4000):
        now = round(now + 0.001, 6)
        for a, b in ((m, s), (s, m)):
            t = a.get_timer()
            if t is not None and t <= now:
                a.handle_timer(now=now)
            for d in a.datagrams_to_send(now=now):
                h.update(d)
                n += 1
                if n % 7:
                    b.receive_datagram(d, now=now)
        if mode == "replicate" and step % 50 == 0:
            c = mt.get(sample_conn(rng.randrange(3000)).key)
            if c is not None:
                c.expires = now + 500.0
                m.local_update(c, now=now)
    print(mode, n, h.hexdigest())
    print(sorted(m.stats.items()), sorted(m.drops.items()))
    print(sorted(s.stats.items()), sorted(s.drops.items()), s.sync_state.name)
    for c in sorted(st.conns(), key=lambda c: c.key):
        print(conn_to_record(c, now, window=window))
"""


def test_interpreted_sync_core_matches_the_compiled_one(tmp_path: Path) -> None:
    """ct_sync (pmct/sync, compiled when scripts/build_accel.py lists it): the same datagrams,
    byte for byte, the same counters and the same slave table, compiled and interpreted."""
    import pmct.sync.protocol

    if not str(pmct.sync.protocol.__file__).endswith(".so"):
        pytest.skip("pmct.sync is not compiled here (scripts/build_accel.py not run)")
    src = tmp_path / "src"
    shutil.copytree(REPO / "pmct", src / "pmct", ignore=shutil.ignore_patterns("*.so"))
    env = {"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", _SYNC_SCRIPT],
        cwd=src,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout.splitlines()
    here = subprocess.run(
        [sys.executable, "-c", _SYNC_SCRIPT],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout.splitlines()
    probe = subprocess.run(
        [sys.executable, "-c", "import pmct.sync.protocol as p; print(p.__file__)"],
        cwd=src,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert probe.strip().endswith("protocol.py"), "the subprocess did not run the sources"
    assert len(here) > 2000 and "SYNCED" in "\n".join(here[:8])
    assert out == here
