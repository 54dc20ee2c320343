"""A spoofed ct_sync packet changes nothing and is counted (docs/protocol.md §5, §13).

Both firewalls share an HMAC-SHA256 key file. From inside the lab, datagrams that would do
real damage if accepted are sent to each node's sync port, built with the real encoder but
the wrong key (and once with no HMAC at all, and once as garbage):

* to the master fw-a: a MASTER_ANNOUNCE "from fw-b" with the largest possible term, which
  would make fw-a demote itself (split-brain rule);
* to the slave fw-b: an announce "from fw-a" with a new term and, right after it, a SYNC with a
  CT_UPDATE for a connection that does not exist, which would be inserted.

Afterwards: roles, terms, the followed master and both tables are unchanged, every spoof is
counted under its drop reason, and sync still works (a restarted fw-b resyncs).
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator

import pytest
from synclab import (
    KEY,
    NODE_ID,
    PORT,
    SYNC_IP,
    Sessions,
    entries,
    has_sessions,
    start_fw,
    status,
    sync_status,
    write_key,
)

from pmct.lab.topology import Lab
from pmct.sync.codec import Announce, PacketType, encode_announce, encode_datagram
from pmct.sync.records import pack_conn
from pmct.sync.sim import sample_conn

pytestmark = [pytest.mark.netns, pytest.mark.slow]

WRONG_KEY = b"this-is-not-the-cluster-key-0000"
SEND = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for h in sys.argv[3:]:
    s.sendto(bytes.fromhex(h), (sys.argv[1], int(sys.argv[2])))
"""


@pytest.fixture
def lab() -> Iterator[Lab]:
    lab = Lab()
    try:
        lab.up()
        yield lab
    finally:
        lab.down()


def spoof(lab: Lab, src_fw: str, dst_fw: str, datagrams: list[bytes]) -> None:
    """Send ``datagrams`` from ``src_fw``'s namespace to ``dst_fw``'s sync port."""
    lab.sh(
        src_fw,
        [sys.executable, "-c", SEND, SYNC_IP[dst_fw], str(PORT), *(d.hex() for d in datagrams)],
    )


def forged(ptype: int, body: bytes, *, node: int, epoch: int, seq: int, key: bytes | None) -> bytes:
    return encode_datagram(ptype, body, node=node, epoch=epoch, seq=seq, stamp=0, key=key)


def test_spoofed_sync_packets_change_nothing_and_are_counted(lab: Lab) -> None:
    key_file = write_key(lab)
    start_fw(lab, "fw-a", "active", key_file=key_file)
    start_fw(lab, "fw-b", "passive", key_file=key_file)
    sessions = Sessions(lab, 2)
    sessions.wait_more(10)
    sa0, sb0 = sync_status(lab, "fw-a"), sync_status(lab, "fw-b")
    assert sa0["hmac"] and sb0["hmac"] and sb0["master"] == NODE_ID["fw-a"]
    table_a0, table_b0 = set(entries(lab, "fw-a")), set(entries(lab, "fw-b"))
    assert table_a0 == table_b0 and has_sessions(lab, "fw-b", sessions)

    ann = int(PacketType.MASTER_ANNOUNCE)
    sync = int(PacketType.SYNC)
    fake = sample_conn(4242)  # 10.0.16.146 -> 192.0.2.1:443, not in anyone's table
    record = pack_conn(fake, 0.0)
    # what an attacker on the sync link would try, with the wrong key
    to_master = [
        forged(
            ann,
            encode_announce(Announce(0xFFFF_FFFF, 0, 0)),
            node=NODE_ID["fw-b"],
            epoch=sb0["epoch"],
            seq=0x7000_0000,
            key=WRONG_KEY,
        )
    ]
    to_slave = [
        forged(
            ann,
            encode_announce(Announce(0xFFFF_FFFF, 0x6000_0000, 0)),
            node=NODE_ID["fw-a"],
            epoch=sa0["epoch"],
            seq=0x6000_0000,
            key=WRONG_KEY,
        ),
        forged(
            sync, record, node=NODE_ID["fw-a"], epoch=sa0["epoch"], seq=0x6000_0001, key=WRONG_KEY
        ),
    ]
    no_hmac = forged(
        sync, record, node=NODE_ID["fw-a"], epoch=sa0["epoch"], seq=0x6000_0002, key=None
    )
    garbage = b"\x01\x03" + bytes(30)
    spoof(lab, "fw-b", "fw-a", to_master)
    spoof(lab, "fw-a", "fw-b", [*to_slave, no_hmac, garbage])
    sessions.wait_more(40)  # 2 s: everything arrived, and the master announced meanwhile

    sa, sb = sync_status(lab, "fw-a"), sync_status(lab, "fw-b")
    # counted by reason: every forged packet as unauthenticated, the garbage as malformed
    assert sa["drops"]["unauthenticated"] - sa0["drops"]["unauthenticated"] == len(to_master)
    assert sb["drops"]["unauthenticated"] - sb0["drops"]["unauthenticated"] == len(to_slave) + 1
    assert sb["drops"]["malformed"] - sb0["drops"]["malformed"] == 1
    # nothing changed: roles, claims, following, tables
    assert (status(lab, "fw-a")["role"], status(lab, "fw-b")["role"]) == ("active", "passive")
    assert (sa["role"], sa["term"]) == ("master", sa0["term"])
    assert (sb["role"], sb["master"], sb["state"]) == ("slave", NODE_ID["fw-a"], "SYNCED")
    assert sa["counters"]["split_brain_demotions"] == 0
    # the real master's packets (announces every second) still arrive and are accepted
    rx = sb["counters"]["rx_packets"] - sb0["counters"]["rx_packets"]
    dropped = sum(sb["drops"].values()) - sum(sb0["drops"].values())
    assert rx - dropped > 0 and sb["master_alive"] and sb["behind"] == 0
    table_a, table_b = set(entries(lab, "fw-a")), set(entries(lab, "fw-b"))
    assert table_a == table_a0 and table_b == table_b0
    assert not any(k[1][0] == fake.orig.src_text() for k in table_b)
    # and sync still works with the real key: a restarted fw-b gets the sessions back
    lab.stop("fw-b", signal.SIGTERM)
    start_fw(lab, "fw-b", "passive", key_file=key_file)
    assert has_sessions(lab, "fw-b", sessions)
    assert sync_status(lab, "fw-b")["drops"]["unauthenticated"] == 0
    sessions.assert_intact(sessions.stop())
    assert KEY.encode() != WRONG_KEY
