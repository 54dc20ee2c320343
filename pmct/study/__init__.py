"""Comparison studies: concurrent tracking against state replication, side by side.

A study (configs/studies/*.toml, spec.py) feeds the same traffic (traffic.py) through two pure
engines, a master and a standby, under each strategy (strategies.py: ``none``, ``concurrent``,
``concurrent+resync``, ``replicate``) and each fault (faults.py), over pmct.sync.sim's simulated
link and clock, and measures at every failover point (metrics.py). runner.py sweeps, report.py
writes CSV, markdown and PNGs. docs/study.md presents a run.

Everything below the runner is deterministic for a seed: no sockets, no wall clock. The
runner alone reads a CPU clock, to report CPU per packet next to the simulated results.
"""

from __future__ import annotations
