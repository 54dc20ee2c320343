"""Connection helpers in the running node: what ``pmct conntrack -L expect`` shows.

The helpers themselves (FTP, TFTP) and the expectation table are the engine's
(pmct/conntrack/helpers/, pmct/conntrack/expect.py); which ports get a helper is the
``[helpers]`` config section (pmct/config.py HelpersConfig, passed to ``Engine(helpers=...)``);
the EXPECT stream of ct_sync is drained by the sync shell (syncshell.py ``expect_events``).
This module only turns the pending expectations into the control socket's answer: the lines
of conntrack-tools' ``conntrack -L expect`` (libnetfilter_conntrack
__snprintf_expect_default(), replay.format_expect_line) and, for ``--json`` and the tests,
the same as plain data.

Rules: read-only, no protocol logic; the clock is the caller's ``now``.
"""

from __future__ import annotations

from typing import Any

from pmct.conntrack.core import Engine
from pmct.conntrack.expect import Expectation
from pmct.conntrack.keys import Tuple

__all__ = ["expect_listing", "expect_to_dict"]

_PROTO_NAMES = {6: "tcp", 17: "udp", 132: "sctp", 136: "udplite", 33: "dccp"}


def _helper_name(helper: Any) -> str:
    if helper is None:
        return ""
    return str(getattr(helper, "name", helper))


def expect_to_dict(exp: Expectation, now: float) -> dict[str, Any]:
    """One pending expectation as plain data (``pmct conntrack -L expect --json``)."""
    t = Tuple(exp.l3, exp.proto, exp.src, exp.dst, exp.sport, exp.dport)
    mask = Tuple(exp.l3, exp.proto, exp.src_mask, b"\xff" * len(exp.dst), exp.sport_mask, 0xFFFF)
    m = exp.master.orig
    return {
        "proto": _PROTO_NAMES.get(exp.proto, str(exp.proto)),
        "tuple": [t.src_text(), t.dst_text(), t.sport, t.dport],
        "mask": [mask.src_text(), mask.dst_text(), mask.sport, mask.dport],
        "master": [m.src_text(), m.dst_text(), m.sport, m.dport],
        "timeout": max(0, int(exp.expires - now + 1e-6)),
        "class": exp.klass,
        "flags": exp.flags,
        "helper": _helper_name(exp.master.helper),
    }


def expect_listing(engine: Engine, now: float) -> dict[str, Any]:
    """The control socket's ``expect`` answer: ``lines`` as ``conntrack -L expect`` prints
    them, ``entries`` as ``expect_to_dict``; creation order."""
    from pmct.replay import format_expect_line

    exps = engine.expectations(now)
    return {
        "lines": [format_expect_line(e, now) for e in exps],
        "entries": [expect_to_dict(e, now) for e in exps],
    }
