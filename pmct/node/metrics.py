"""Rendering of the node's status: human text, ``conntrack -S`` lines, Prometheus text format.

Rules:
1. PURE: each function takes the status dict the daemon builds (the same object
   ``pmct status --json`` prints) and returns text. No clock, no I/O; the HTTP endpoint and
   the CLI only print what these return.
2. Metric names follow node_exporter's conntrack collector where the meaning overlaps
   (``node_nf_conntrack_entries``, ``node_nf_conntrack_entries_limit``,
   ``node_nf_conntrack_stat_*``), with the ``pmct_`` prefix instead of ``node_``, so a
   dashboard built for the kernel needs only the prefix changed. Everything pmct-specific is
   ``pmct_*`` with labels (ctstate, action, reason, protocol, state).
3. ``conntrack -S`` prints the counters in conntrack-tools' order (cpu=0 found= invalid=
   insert= insert_failed= drop= early_drop= error= search_restart= ...).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["render_prometheus", "render_stats", "render_status"]

Status = Mapping[str, Any]


def _duration(secs: float) -> str:
    s = int(secs)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    if d:
        return f"{d}d{h:02d}h{m:02d}m"
    if h:
        return f"{h}h{m:02d}m{s:02d}s"
    return f"{m}m{s:02d}s" if m else f"{s}s"


def _n(d: Mapping[str, Any], key: str) -> str:
    v = d.get(key)
    return "?" if v is None else str(v)


def _pairs(d: Mapping[str, Any]) -> str:
    return "  ".join(f"{k} {v}" for k, v in d.items())


def render_status(st: Status) -> str:
    """``pmct status``: a screenful for a person."""
    q = st["queue"]
    lines = [
        f"pmct {st['node']}: {st['role']}, up {_duration(st['uptime'])} (pid {st['pid']})",
        f"queue {q['num']} (fail-{q['fail']}): {st['packets']['total']} packets, "
        f"{st['packets']['per_second']:.1f}/s now; queue full drops {_n(q, 'queue_dropped')}"
        f", socket drops {_n(q, 'user_dropped')}, waiting {_n(q, 'waiting')}",
        *(
            [
                f"ring      {'open' if ring.get('open') else 'closed'}: {ring.get('packets', 0)} "
                f"packets, missed (ring full) {ring.get('drops', 0)}, "
                f"too long {ring.get('truncated', 0)}"
            ]
            if (ring := q.get("ring"))
            else []
        ),
        f"ctstate   {_pairs(st['ctstates'])}",
        f"verdicts  {_pairs(st['verdicts'])}   (errors {st['errors']['callback']}, "
        f"unparsed {st['errors']['unparsed']})",
    ]
    ct = st["conntrack"]
    lines.append(f"conntrack {ct['entries']} of {ct['limit']} entries")
    for proto, states in sorted(ct["by_proto_state"].items()):
        lines.append(f"  {proto:<8}{_pairs(dict(sorted(states.items())))}")
    if st["invalid"]:
        lines.append("invalid by reason:")
        for reason, n in sorted(st["invalid"].items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"  {n:>8}  {reason}")
    lines.append("rules (hits):")
    for r in st["rules"]:
        lines.append(f"  {r['hits']:>8}  {r['rule']}")
    lines.append(f"  {st['default']['hits']:>8}  default -> {st['default']['action']}")
    lines += _sync_lines(st.get("sync", {}))
    return "\n".join(lines)


def _sync_lines(sync: Mapping[str, Any]) -> list[str]:
    if "role" not in sync:
        return [f"sync: {sync.get('state', 'not configured')}"]
    init = sync["initsync"]
    ready = "ready" if sync["ready"] else "NOT READY"
    lines = [
        f"sync: {ready}, {sync['mode']} {sync['role']} (node {sync['node_id']}, term "
        f"{sync['term']}), {sync['state']}, master {sync['master']}"
        f"{'' if sync['master_alive'] else ' (silent)'}; {sync['transport']} "
        f"{','.join(sync['address'])}:{sync['port']}{' hmac' if sync['hmac'] else ''}"
    ]
    if init["walk"] is not None:
        lines.append(
            f"  init sync walk {init['walk']}: {init['done']} of {init['total']} "
            f"({init['percent']:.1f} %), {init['rate']:.0f} entries/s"
        )
    c = sync["counters"]
    lines.append(
        f"  packets rx {c['rx_packets']} tx {c['tx_packets']}  nack sent {c['nack_sent']} "
        f"received {c['nack_received']}  retransmitted {c['retransmitted']}  walks started "
        f"{c['walks_started']} received {c['walks_received']}  behind {sync['behind']}"
    )
    drops = {k: v for k, v in sync["drops"].items() if v}
    if drops:
        lines.append(f"  dropped  {_pairs(drops)}")
    return lines


def render_stats(st: Status) -> str:
    """``pmct conntrack -S``: one line in conntrack-tools' format."""
    s = st["conntrack"]["stats"]
    fields = (
        ("found", 0),
        ("invalid", st["ctstates"].get("invalid", 0)),
        ("insert", s.get("new", 0)),
        ("insert_failed", 0),
        ("drop", s.get("drop", 0)),
        ("early_drop", s.get("early_drop", 0)),
        ("error", st["errors"]["callback"] + st["errors"]["unparsed"]),
        ("search_restart", s.get("repeat", 0)),
        ("clash_resolve", 0),
        ("chaintoolong", 0),
    )
    return "cpu=0   \t" + " ".join(f"{k}={v}" for k, v in fields)


def _esc(v: Any) -> str:
    return str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _metric(
    name: str, mtype: str, help_: str, samples: Iterable[tuple[Mapping[str, Any], float]]
) -> list[str]:
    out = [f"# HELP {name} {help_}", f"# TYPE {name} {mtype}"]
    for labels, value in samples:
        lab = ",".join(f'{k}="{_esc(v)}"' for k, v in labels.items())
        out.append(f"{name}{{{lab}}} {value}" if lab else f"{name} {value}")
    return out


def render_prometheus(st: Status) -> str:
    """Prometheus text exposition format (version 0.0.4)."""
    ct = st["conntrack"]
    s = ct["stats"]
    q = st["queue"]
    node = {"node": st["node"]}
    m: list[str] = []
    m += _metric("pmct_up", "gauge", "1 while the daemon runs.", [(node, 1)])
    m += _metric(
        "pmct_role",
        "gauge",
        "1 for the node's current role.",
        [({**node, "role": r}, 1 if st["role"] == r else 0) for r in ("active", "passive")],
    )
    m += _metric("pmct_uptime_seconds", "gauge", "Seconds since start.", [(node, st["uptime"])])
    m += _metric(
        "pmct_nf_conntrack_entries",
        "gauge",
        "Number of currently allocated flow entries for connection tracking.",
        [(node, ct["entries"])],
    )
    m += _metric(
        "pmct_nf_conntrack_entries_limit",
        "gauge",
        "Maximum size of connection tracking table.",
        [(node, ct["limit"])],
    )
    for key, value, help_ in (
        ("found", 0, "Number of searched entries which were successful."),
        (
            "invalid",
            st["ctstates"].get("invalid", 0),
            "Number of packets that could not be tracked.",
        ),
        ("ignore", s.get("ignore", 0), "Number of packets that were already tracked or ignored."),
        ("insert", s.get("new", 0), "Number of entries inserted into the list."),
        (
            "insert_failed",
            0,
            "Number of entries for which list insertion was attempted but failed.",
        ),
        ("drop", s.get("drop", 0), "Number of packets dropped due to conntrack failure."),
        (
            "early_drop",
            s.get("early_drop", 0),
            "Number of dropped entries to make room for new ones.",
        ),
        ("search_restart", s.get("repeat", 0), "Number of lookups restarted (TCP reopen)."),
    ):
        m += _metric(f"pmct_nf_conntrack_stat_{key}", "gauge", help_, [(node, value)])
    m += _metric(
        "pmct_packets_total",
        "counter",
        "Packets tracked, by the engine's ctstate.",
        [({**node, "ctstate": k}, v) for k, v in st["ctstates"].items()],
    )
    m += _metric(
        "pmct_verdicts_total",
        "counter",
        "NFQUEUE verdicts, by action.",
        [({**node, "action": k}, v) for k, v in st["verdicts"].items()],
    )
    m += _metric(
        "pmct_invalid_total",
        "counter",
        "Invalid packets, by reason.",
        [({**node, "reason": k}, v) for k, v in sorted(st["invalid"].items())],
    )
    m += _metric(
        "pmct_errors_total",
        "counter",
        "Packets the daemon could not handle (verdict by the fail mode), by kind.",
        [({**node, "kind": k}, v) for k, v in st["errors"].items()],
    )
    m += _metric(
        "pmct_queue_dropped_total",
        "counter",
        "Packets the kernel could not queue, by cause (queue full, socket buffer full).",
        [
            ({**node, "cause": "queue_full"}, q.get("queue_dropped") or 0),
            ({**node, "cause": "socket_full"}, q.get("user_dropped") or 0),
            # the passive node's packet ring (capture.py): frames the ring had no room for
            ({**node, "cause": "ring_full"}, (q.get("ring") or {}).get("drops", 0)),
        ],
    )
    m += _metric(
        "pmct_connections",
        "gauge",
        "Tracked connections, by protocol and state.",
        [
            ({**node, "protocol": p, "state": k}, v)
            for p, states in sorted(ct["by_proto_state"].items())
            for k, v in sorted(states.items())
        ],
    )
    m += _metric(
        "pmct_rule_hits_total",
        "counter",
        "Packets decided by each policy rule (index from 0; 'default' = the policy).",
        [({**node, "rule": str(i)}, r["hits"]) for i, r in enumerate(st["rules"])]
        + [({**node, "rule": "default"}, st["default"]["hits"])],
    )
    m += _sync_metrics(st.get("sync", {}), node)
    return "\n".join(m) + "\n"


def _sync_metrics(sync: Mapping[str, Any], node: Mapping[str, Any]) -> list[str]:
    if "role" not in sync:
        return []
    m: list[str] = []
    m += _metric(
        "pmct_sync_ready",
        "gauge",
        "1 unless the node is in ct_sync initial sync (the readiness gate).",
        [(node, 1 if sync["ready"] else 0)],
    )
    m += _metric(
        "pmct_sync_master",
        "gauge",
        "1 while this node is the ct_sync master.",
        [(node, 1 if sync["role"] == "master" else 0)],
    )
    m += _metric(
        "pmct_sync_initsync_percent",
        "gauge",
        "Progress of the running init sync walk (100 when none runs).",
        [(node, sync["initsync"]["percent"] if sync["initsync"]["walk"] is not None else 100)],
    )
    m += _metric(
        "pmct_sync_dropped_total",
        "counter",
        "ct_sync datagrams dropped, by reason (docs/protocol.md §13).",
        [({**node, "reason": k}, v) for k, v in sorted(sync["drops"].items())],
    )
    m += _metric(
        "pmct_sync_events_total",
        "counter",
        "ct_sync protocol counters, by name.",
        [({**node, "counter": k}, v) for k, v in sorted(sync["counters"].items())],
    )
    return m
