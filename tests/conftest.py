"""Test-suite wide rules: privilege gates for root tests and hypothesis profiles.

Rules:
1. Tests marked ``netns`` need root, iproute2 and nftables; tests marked ``oracle`` also need
   conntrack-tools and the kernel oracle script (shared/tools/kernel_oracle.py). When the machine
   cannot run them they are SKIPPED with the missing piece named, never silently passed; with
   ``PMCT_REQUIRE_NETNS=1`` (set by .ci/run) the same condition FAILS the test instead, so CI
   cannot go green by skipping (kernel selftests: ksft_skip is reported, not counted as a pass).
2. Hypothesis: profile ``dev`` (few examples, the default) and ``ci`` (many examples), chosen
   when ``CI=true``; ``HYPOTHESIS_PROFILE`` overrides both. No deadlines: a loaded machine must
   not turn into a failing test (no timing assertions).
"""

from __future__ import annotations

import os
import shutil
from functools import cache

import pytest
from hypothesis import HealthCheck, settings

from pmct.fidelity import find_kernel_oracle

settings.register_profile("dev", max_examples=50, deadline=None)
settings.register_profile(
    "ci",
    max_examples=500,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") == "true" else "dev")
)


@cache
def netns_missing() -> str | None:
    """Why netns tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    for tool, pkg in (("ip", "iproute2"), ("nft", "nftables")):
        if shutil.which(tool) is None:
            return f"needs `{tool}` ({pkg}); run scripts/install.sh"
    return None


@cache
def oracle_missing() -> str | None:
    """Why kernel-oracle tests cannot run here, or None when they can."""
    why = netns_missing()
    if why is not None:
        return why
    if shutil.which("conntrack") is None:
        return "needs `conntrack` (conntrack-tools); run scripts/install.sh"
    if find_kernel_oracle() is None:
        return (
            "needs the kernel oracle: set PMCT_KERNEL_ORACLE or keep shared/tools/ beside the "
            "repository (../shared/tools/kernel_oracle.py) or at /work/shared"
        )
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    why = None
    if item.get_closest_marker("oracle") is not None:
        why = oracle_missing()
    elif item.get_closest_marker("netns") is not None:
        why = netns_missing()
    if why is None:
        return
    if os.environ.get("PMCT_REQUIRE_NETNS") == "1":
        pytest.fail(f"PMCT_REQUIRE_NETNS=1 but this root test cannot run: {why}", pytrace=False)
    pytest.skip(why)


def pytest_sessionstart(session: pytest.Session) -> None:
    """Refuse to test stale compiled modules: they shadow the edited sources."""
    from pmct.accel import stale_modules

    stale = stale_modules()
    if stale:
        names = ", ".join(str(p) for p in stale)
        pytest.exit(
            f"compiled modules are older than their sources ({names}): "
            "run `python3 scripts/build_accel.py` (or `--clean`) first",
            returncode=2,
        )
