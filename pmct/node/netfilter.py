"""iptables and nftables rules the node installs, and removes again on exit.

Owns the node's rules in the kernel: nothing else in pmct runs iptables or nft.

What is installed (measurements.md §6 proved each piece on this kernel):

* raw PREROUTING, per data interface, in chain PMCT (ip and ip6):
  ``-i IF -j CT --notrack`` then ``-i IF -j NFQUEUE --queue-num N [--queue-bypass]``.
  NOTRACK must come first: an ACCEPT verdict from the queue leaves the table, so no rule after
  the NFQUEUE rule would run (kernel: nf_reinject() continues at the next hook, not the next
  rule). Untracked packets keep the kernel's conntrack out of the decision.
  ``--queue-bypass`` = fail-open: with no daemon bound the kernel accepts instead of dropping.
* raw chain PMCT_DEFRAG (ip and ip6), never jumped to, holding one ``-m socket`` rule: its
  only purpose is that xt_socket's checkentry enables nf_defrag_ipv4/ipv6 in the namespace
  (kernel: net/netfilter/xt_socket.c socket_mt_enable_defrag()), so the queue gets whole
  datagrams, as nf_conntrack would see them, and the kernel refragments what it forwards.
  ``CT --notrack`` does NOT do that (xt_CT.c xt_ct_tg_check() returns before
  nf_ct_netns_get() for notrack), so without this chain every fragment reached the queue on
  its own, the engine held it (ctstate "fragment") and the default policy dropped it:
  measured in the lab, ``ping -s 3000`` through the pair failed. Without xt_socket (a
  kernel without it) the chain is skipped with a warning and fragments stay the policy's.
* filter INPUT and FORWARD, chain PMCT_REJECT: packets pmct marked "reject" are answered with a
  TCP RST or an ICMP port unreachable by the kernel's own REJECT target; NFQUEUE can only accept
  or drop, so the verdict is "accept with the reject mark bit".
* The passive node's silence ("l2drop"), two nft tables:
  ``table arp pmct_silence`` (output chain, drop on the data interfaces) and
  ``table netdev pmct_silence`` (one egress chain per data interface, policy drop). The egress
  drop alone already stops every frame, ARP, ND, MLD, IGMP and ICMP errors included; the arp
  chain keeps ARP replies off even if an egress hook is missing. The sync interface is never
  in either table.
* The cluster multicast MAC (``cluster.mode = "multicast-mac"``, measurements.md §6 "B"), one
  pair of tables per data interface, ``pmct_cmac_<if>``: a netdev ingress chain
  ``ether daddr <cluster MAC> meta pkttype set host`` (the frame arrives as PACKET_MULTICAST and
  ip_forward() forwards only PACKET_HOST: without it the active node cannot forward), and an
  arp output chain that writes the cluster MAC into the sender hardware address of every ARP
  packet the node sends on that interface, so neighbours resolve the cluster addresses to the
  multicast MAC and a learning switch floods their frames to both nodes. The Ethernet source
  stays the node's own MAC (a multicast source address is invalid). Installed through
  netlink.py ``Links.set_mac`` so the interface's undo log removes it.

Rules:
1. Everything is idempotent: install() first removes leftovers of a crashed run, remove()
   ignores what is already gone. Each command's failure is raised with its stderr; nothing is
   left half-installed by install() (it removes what it did on error).
2. No packet logic here; the daemon decides when to call what.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Sequence

__all__ = ["ClusterMac", "NetfilterError", "QueueRules", "Silence"]

log = logging.getLogger("pmct.netfilter")

CHAIN_PRE = "PMCT"
CHAIN_REJECT = "PMCT_REJECT"
CHAIN_DEFRAG = "PMCT_DEFRAG"
SILENCE_TABLE = "pmct_silence"
CLUSTER_MAC_TABLE = "pmct_cmac_"


class NetfilterError(RuntimeError):
    """An iptables/nft command failed."""


def _run(cmd: Sequence[str], stdin: str | None = None, check: bool = True) -> bool:
    p = subprocess.run(list(cmd), input=stdin, capture_output=True, text=True)
    if p.returncode != 0:
        if check:
            raise NetfilterError(f"{' '.join(cmd)}: {p.stderr.strip() or p.returncode}")
        return False
    return True


def _have(tool: str) -> bool:
    return shutil.which(tool) is not None


class QueueRules:
    """raw PREROUTING NOTRACK + NFQUEUE on the data interfaces, and the REJECT helper chain."""

    def __init__(
        self,
        data_ifaces: Sequence[str],
        queue_num: int,
        *,
        bypass: bool,
        ipv6: bool,
        reject_mark: int,
    ) -> None:
        self.ifaces = tuple(data_ifaces)
        self.queue_num = queue_num
        self.bypass = bypass
        self.reject_mark = reject_mark
        self.tools = ["iptables"] + (["ip6tables"] if ipv6 and _have("ip6tables") else [])

    def install(self) -> None:
        self.remove()
        try:
            for tool in self.tools:
                self._install(tool)
        except NetfilterError:
            self.remove()
            raise
        log.info(
            "queue rules: raw PREROUTING -i %s -> NOTRACK, NFQUEUE %d%s (%s)",
            ",".join(self.ifaces),
            self.queue_num,
            " --queue-bypass" if self.bypass else "",
            "+".join(self.tools),
        )

    def _install(self, tool: str) -> None:
        ipt = [tool, "-w"]
        _run([*ipt, "-t", "raw", "-N", CHAIN_PRE])
        for ifc in self.ifaces:
            _run([*ipt, "-t", "raw", "-A", CHAIN_PRE, "-i", ifc, "-j", "CT", "--notrack"])
            q = [*ipt, "-t", "raw", "-A", CHAIN_PRE, "-i", ifc, "-j", "NFQUEUE"]
            q += ["--queue-num", str(self.queue_num)]
            if self.bypass:
                q.append("--queue-bypass")
            _run(q)
        mark = f"{self.reject_mark:#x}/{self.reject_mark:#x}"
        unreach = "icmp-port-unreachable" if tool == "iptables" else "icmp6-port-unreachable"
        _run([*ipt, "-t", "filter", "-N", CHAIN_REJECT])
        base = [*ipt, "-t", "filter", "-A", CHAIN_REJECT, "-m", "mark", "--mark", mark]
        _run([*base, "-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"])
        _run([*base, "-j", "REJECT", "--reject-with", unreach])
        _run([*ipt, "-t", "raw", "-N", CHAIN_DEFRAG])
        if not _run(
            [*ipt, "-t", "raw", "-A", CHAIN_DEFRAG, "-m", "socket", "-j", "RETURN"], check=False
        ):
            log.warning(
                "%s: no xt_socket, kernel defrag stays off: fragments reach the policy "
                'one by one (ctstate "fragment")',
                tool,
            )
        _run([*ipt, "-t", "raw", "-I", "PREROUTING", "1", "-j", CHAIN_PRE])
        for hook in ("INPUT", "FORWARD"):
            _run([*ipt, "-t", "filter", "-I", hook, "1", "-j", CHAIN_REJECT])

    def remove(self) -> None:
        for tool in ("iptables", "ip6tables"):
            if not _have(tool):
                continue
            ipt = [tool, "-w"]
            while _run([*ipt, "-t", "raw", "-D", "PREROUTING", "-j", CHAIN_PRE], check=False):
                pass
            for hook in ("INPUT", "FORWARD"):
                while _run([*ipt, "-t", "filter", "-D", hook, "-j", CHAIN_REJECT], check=False):
                    pass
            for table, chain in (
                ("raw", CHAIN_PRE),
                ("raw", CHAIN_DEFRAG),
                ("filter", CHAIN_REJECT),
            ):
                if _run([*ipt, "-t", table, "-F", chain], check=False):
                    _run([*ipt, "-t", table, "-X", chain], check=False)


class Silence:
    """The passive node's layer-2 drop on the data interfaces (on = emits nothing)."""

    def __init__(
        self, data_ifaces: Sequence[str], *, ingress_drop: bool = False, ipv6: bool = True
    ) -> None:
        self.ifaces = tuple(data_ifaces)
        # queue.passive_capture = "ring" (capture.py): the passive node reads its frames from
        # a packet ring, a tap that runs before the ingress hook; dropping IP there spares the
        # stack and NFQUEUE every packet the node would only have dropped after tracking.
        self.ingress_drop = ingress_drop
        self.ipv6 = ipv6
        self.on = False

    def script(self) -> str:
        names = ", ".join(f'"{i}"' for i in self.ifaces)
        protos = "{ ip, ip6 }" if self.ipv6 else "ip"
        chains = "".join(
            f'chain egress_{n} {{ type filter hook egress device "{i}" priority 0; '
            f"policy drop; }}; "
            + (
                f'chain ingress_{n} {{ type filter hook ingress device "{i}" priority 0; '
                f"meta protocol {protos} drop; }}; "
                if self.ingress_drop
                else ""
            )
            for n, i in enumerate(self.ifaces)
        )
        return (
            f"table arp {SILENCE_TABLE} {{ chain output {{ type filter hook output priority 0; "
            f"oifname {{ {names} }} drop; }}; }}\n"
            f"table netdev {SILENCE_TABLE} {{ {chains}}}\n"
        )

    @staticmethod
    def _reset() -> str:
        """An nft batch that removes both tables whether they exist or not (add, delete)."""
        return "".join(
            f"add table {f} {SILENCE_TABLE}\ndelete table {f} {SILENCE_TABLE}\n"
            for f in ("arp", "netdev")
        )

    def enable(self) -> None:
        # One atomic batch: leftovers out, silence in (one nft run instead of three).
        try:
            _run(["nft", "-f", "-"], stdin=self._reset() + self.script())
        except NetfilterError:
            self._delete()
            raise
        self.on = True

    def disable(self) -> None:
        # One nft run, not one per table: `pmct promote` waits for this (about 18 ms per run
        # measured in the lab; bench_failover).
        if not _run(["nft", "-f", "-"], stdin=self._reset(), check=False):
            self._delete()
        self.on = False

    @staticmethod
    def _delete() -> None:
        for family in ("arp", "netdev"):
            _run(["nft", "delete", "table", family, SILENCE_TABLE], check=False)


class ClusterMac:
    """Receive and announce a multicast cluster MAC on one data interface (see the docstring)."""

    def __init__(self, iface: str, mac: str) -> None:
        self.iface = iface
        self.mac = mac.lower()
        # nft identifiers: letters, digits, underscore; interface names may hold - and .
        self.table = CLUSTER_MAC_TABLE + "".join(c if c.isalnum() else "_" for c in iface)

    def script(self) -> str:
        t, i, m = self.table, self.iface, self.mac
        return (
            f'table netdev {t} {{ chain ingress {{ type filter hook ingress device "{i}" '
            f"priority -500; ether daddr {m} meta pkttype set host; }}; }}\n"
            f"table arp {t} {{ chain output {{ type filter hook output priority -10; "
            f'oifname "{i}" arp saddr ether set {m}; }}; }}\n'
        )

    def install(self) -> None:
        self.remove()
        try:
            _run(["nft", "-f", "-"], stdin=self.script())
        except NetfilterError:
            self.remove()
            raise

    def remove(self) -> None:
        for family in ("netdev", "arp"):
            _run(["nft", "delete", "table", family, self.table], check=False)
