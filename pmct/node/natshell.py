"""NAT in the running node: builds the allocator from ``[nat]`` and hands out the two hooks.

Why a shell of its own: pmct/nat is pure (rules, deterministic allocation, rewriting); what is
left for the node is I/O and wiring, and it is small:

1. Masquerade addresses are resolved once, at start-up: the cluster addresses of the named data
   interface (``[cluster.interface.X] addresses``, configured identically on both nodes), else
   the interface's own global addresses read over netlink (sorted, so the same set gives the
   same order). The kernel's MASQUERADE picks the address per packet from the route
   (nf_nat_masquerade.c nf_nat_masquerade_ipv4(): inet_select_addr()); pmct must not, because
   the passive node, which has no route out while silent, has to compute the same binding.
   DEVIATION(kernel): the masquerade address is fixed at start; an address change needs a
   restart (the kernel also flushes masqueraded entries on NETDEV_DOWN / address removal).
2. ``attach(engine)`` sets ``Engine.nat_bind``: every new entry, on the active and the passive
   node alike, gets its binding in the engine (pmct/conntrack/core.py ``_alloc``). Both nodes
   run the same rules and seed over the same packets, so their tables agree without sync.
3. ``packet(data, ctstate, dir, conn)`` is the datapath's NAT step (datapath.py
   ``Datapath.nat``): the active node's accepted packets are rewritten (pmct/nat/rewrite.py)
   and the new datagram goes back to the kernel in the NFQUEUE verdict (nfnetlink_queue.c
   nfqnl_mangle()). ``None`` means "unchanged"; an un-NATed entry costs one bit test. FTP
   control connections also get their pending PORT/227 rewrite and sequence adjustment there
   (pmct/nat/ftp.py ``ftp_nat_packet``; ``attach`` installs the FTP helper's NAT hook).
4. ``kernel_settings(links)``: a packet rewritten in raw PREROUTING is routed afterwards by its
   new header (ip_rcv_finish() runs after the PREROUTING hook). A SNATed packet from the LAN,
   and the reply of a forwarded connection, then carry the node's own cluster address as
   source; ip_route_input_slow() -> fib_validate_source() drops a packet with a local source
   address as a martian unless ``accept_local`` is set on the interface it arrived on
   (net/ipv4/fib_frontend.c __fib_validate_source()). So accept_local = 1 on the data
   interfaces while NAT is on (restored on exit by the netlink undo log).

No protocol logic here: what is rewritten and how is pmct/nat's.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from pmct.conntrack.constants import Status
from pmct.conntrack.core import Engine
from pmct.nat.alloc import Nat
from pmct.nat.ftp import disable_ftp_nat, enable_ftp_nat, ftp_nat_packet
from pmct.nat.rewrite import NAT_MASK, nat_packet
from pmct.nat.rules import NatConfig

__all__ = ["NatShell", "cluster_addresses", "link_addresses", "nat_payload", "resolve_masquerade"]

log = logging.getLogger("pmct.nat")

# Entries the NAT step must look at: NATed ones, and FTP control connections (pending PORT/227
# rewrite, sequence adjustment: pmct/nat/ftp.py).
_STEP_MASK: Final = NAT_MASK | int(Status.SEQ_ADJUST) | int(Status.HELPER)
_FTP_MASK: Final = int(Status.SEQ_ADJUST) | int(Status.HELPER)
SEQADJ_FAILED = [0]  # packets ftp_nat_packet() wanted dropped (see nat_payload)

AddressLookup = Callable[[str], list[bytes]]


def nat_payload(data: bytes, ctstate: int, d: int, conn: Any) -> bytes | None:
    """The datapath's NAT step: the rewritten datagram, or None when nothing changes.

    Kernel order: the NAT manip (nf_nat_manip_pkt()), then the helper's payload rewrite and
    the sequence adjustment at confirmation (nf_confirm(): helper, nf_ct_seq_adjust()).
    DEVIATION(kernel): when the sequence adjustment fails on malformed TCP options the kernel
    drops the packet; the datapath's NAT step cannot drop, so the packet leaves with its
    addresses rewritten but its sequence numbers unadjusted (counted in SEQADJ_FAILED).
    """
    if conn is None:
        return None
    status = conn.status
    if not status & _STEP_MASK:
        return None
    out = nat_packet(data, ctstate, d, conn) if status & NAT_MASK else data
    if status & _FTP_MASK:
        f = ftp_nat_packet(out, ctstate, d, conn)
        if f is None:
            SEQADJ_FAILED[0] += 1
        else:
            out = f
    return None if out is data else out


def cluster_addresses(cluster: Any, name: str) -> list[bytes]:
    """Packed addresses of ``[cluster.interface.<name>] addresses`` (config order)."""
    ci = cluster.interface(name) if cluster is not None else None
    if ci is None:
        return []
    return [ipaddress.ip_interface(a).ip.packed for a in ci.addresses]


def link_addresses(links: Any, name: str) -> list[bytes]:
    """The interface's global (scope universe) addresses over netlink, sorted."""
    out: list[bytes] = []
    for msg in links.ipr.get_addr(index=links.index(name)):
        if msg["scope"] != 0:
            continue
        a = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
        try:
            out.append(socket.inet_pton(msg["family"], a))
        except (OSError, TypeError, ValueError):
            continue
    return sorted(set(out))


def resolve_masquerade(
    cfg: NatConfig, cluster: Any, lookup: AddressLookup | None = None
) -> tuple[NatConfig, dict[str, list[bytes]]]:
    """Fill masquerade rules: cluster addresses first, else ``lookup(name)`` (netlink)."""
    names = sorted({r.masquerade for r in cfg.snat if r.masquerade})
    addrs: dict[str, list[bytes]] = {}
    for name in names:
        found = cluster_addresses(cluster, name)
        if not found and lookup is not None:
            found = lookup(name)
        addrs[name] = found
    return cfg.resolve(addrs), addrs


def _text(a: bytes) -> str:
    return str(ipaddress.ip_address(a))


class NatShell:
    """One node's NAT: the allocator (``nat``), its engine hook and its datapath step."""

    __slots__ = ("config", "ftp", "masquerade", "nat")

    def __init__(self, cfg: NatConfig, cluster: Any = None, lookup: AddressLookup | None = None):
        self.config, self.masquerade = resolve_masquerade(cfg, cluster, lookup)
        for name, addrs in self.masquerade.items():
            if not addrs:
                log.warning("nat: masquerade %s: the interface has no address; rule inactive", name)
            else:
                log.info("nat: masquerade %s -> %s", name, ", ".join(map(_text, addrs)))
        self._warn_unanswered(cluster)
        self.nat = Nat(self.config)
        self.ftp: Any = None

    def _warn_unanswered(self, cluster: Any) -> None:
        """A public address the cluster does not own gets no ARP answer from the active node."""
        if cluster is None or not cluster.interfaces:
            return
        owned = {
            ipaddress.ip_interface(a).ip.packed for ci in cluster.interfaces for a in ci.addresses
        }
        public: set[bytes] = set()
        for r in self.config.snat:
            public.update(r.to)
        for d in self.config.dnat:
            public.update(p.net for p in d.dst if p.plen == 8 * len(p.net))
        for a in sorted(public - owned):
            log.warning(
                "nat: %s is no cluster address: neighbours must route it to the cluster "
                "(nobody answers ARP/ND for it)",
                _text(a),
            )

    def attach(self, engine: Engine) -> None:
        """Every new entry gets its binding (active and passive node alike), and the FTP
        helper rewrites PORT/EPRT/227/229 of NATed control connections (pmct/nat/ftp.py)."""
        engine.nat_bind = self.nat.bind
        self.ftp = enable_ftp_nat(self.config.seed)

    @staticmethod
    def detach(engine: Engine) -> None:
        engine.nat_bind = None
        disable_ftp_nat()

    packet = staticmethod(nat_payload)

    @staticmethod
    def kernel_settings(links: Any, data_ifaces: Sequence[str]) -> None:
        """accept_local on the data interfaces (see the module docstring, point 4)."""
        for name in data_ifaces:
            links.set_sysctl(f"/proc/sys/net/ipv4/conf/{name}/accept_local", "1")

    def status(self) -> Mapping[str, Any]:
        cfg = self.config
        return {
            "snat": len(cfg.snat),
            "dnat": len(cfg.dnat),
            "masquerade": {k: [_text(a) for a in v] for k, v in self.masquerade.items()},
            "allocations": dict(self.nat.stats),
            "ftp": dict(self.ftp.stats) if self.ftp is not None else {},
            "seqadj_failed": SEQADJ_FAILED[0],
        }
