"""The ct_sync socket over IPv6: scopes, zones, the MTU-derived datagram size (transport.py).

The sync link between two namespaces over IPv6 (link-local, ULA, ff02::/ff05:: multicast) is
tests/integration/test_sync_ipv6.py; this file checks what can be checked on the loopback.
"""

from __future__ import annotations

import os
import socket

import pytest

from pmct.config import SyncNodeConfig
from pmct.node.syncshell import sync_config
from pmct.node.transport import JUMBO_PAYLOAD, SyncTransport, TransportError

root = pytest.mark.skipif(os.geteuid() != 0, reason="SO_BINDTODEVICE needs root")


def _free_port(family: socket.AddressFamily, host: str) -> int:
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


@root
def test_ipv6_unicast_moves_whole_datagrams_on_loopback() -> None:
    port = _free_port(socket.AF_INET6, "::1")
    t = SyncTransport("lo", ["::1"], port)
    try:
        assert t.v6 and t.dests == [("::1", port, 0, socket.if_nametoindex("lo"))]
        for size in (1, 1452, 8000):
            t.send(bytes([size % 256]) * size)
        assert [len(d) for d in t.recv_many()] == [1, 1452, 8000]
        assert t.stats()["tx_errors"] == 0
    finally:
        t.close()


@root
def test_max_payload_follows_the_mtu_and_the_family() -> None:
    port = _free_port(socket.AF_INET, "127.0.0.1")
    for peer in ("127.0.0.1", "::1"):
        t = SyncTransport("lo", [peer], port)
        try:
            assert t.max_payload == JUMBO_PAYLOAD  # lo's MTU is 65536: capped
        finally:
            t.close()
    cfg = SyncNodeConfig(enabled=True, node_id=1, peers=(2,), address=("fe80::2",))
    assert sync_config(cfg, None, 1452).max_datagram == 1452
    assert sync_config(cfg, None).max_datagram == 1472  # a transport without max_payload


@root
def test_a_zone_must_be_the_sync_interface() -> None:
    port = _free_port(socket.AF_INET6, "::1")
    idx = socket.if_nametoindex("lo")
    for ok in ("fe80::2%lo", f"fe80::2%{idx}"):
        t = SyncTransport("lo", [ok], port)
        try:
            assert t.dests == [("fe80::2", port, 0, idx)]  # the zone is the interface's index
        finally:
            t.close()
    with pytest.raises(TransportError, match="scoped to 'eth9', not the sync interface"):
        SyncTransport("lo", ["fe80::2%eth9"], port)
    with pytest.raises(TransportError, match="not an IP address"):
        SyncTransport("lo", ["fe80::zz"], port)
    with pytest.raises(TransportError, match="multicast needs one group"):
        SyncTransport("lo", ["fd00::1"], port, multicast=True)
