"""The README's set-up block and .ci/run must agree: exactly two commands, CI runs the second."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MARKER = "<!-- setup:"


def readme_commands(text: str) -> list[str]:
    """Non-blank, non-comment lines of the fenced block that follows the marker line."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(MARKER))
    assert lines[start + 1].startswith("```"), "the marker must sit right above the fence"
    block = []
    for line in lines[start + 2 :]:
        if line.startswith("```"):
            break
        block.append(line)
    else:
        raise AssertionError("unterminated fenced block")
    return [c for c in block if c.strip() and not c.lstrip().startswith("#")]


def test_readme_has_exactly_two_setup_commands() -> None:
    cmds = readme_commands((ROOT / "README.md").read_text())
    assert len(cmds) == 2
    install, tests = cmds
    assert install.startswith("bash scripts/install.sh ") and "pmct " in install
    assert tests.startswith("bash scripts/install.sh --test ") and "pytest" in tests


def test_setup_block_comes_right_after_the_intro() -> None:
    text = (ROOT / "README.md").read_text()
    before = text[: text.index(MARKER)]
    assert "```" not in before  # no other fenced block before the set-up commands
    assert len(re.findall(r"^## ", before, re.M)) == 0  # and no section


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    cmds = readme_commands((ROOT / "README.md").read_text())
    out = subprocess.run(
        ["bash", str(ROOT / ".ci" / "run"), "--print-command"],
        capture_output=True,
        text=True,
        check=True,
        stdin=subprocess.DEVNULL,
    ).stdout
    assert out == cmds[1] + "\n"


def test_ci_script_is_strict_and_requires_root_tests() -> None:
    script = (ROOT / ".ci" / "run").read_text()
    assert script.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in script
    assert "export PMCT_REQUIRE_NETNS=1" in script
    assert "README.md" in script


def test_ci_refuses_a_readme_without_two_commands(tmp_path: Path) -> None:
    (tmp_path / ".ci").mkdir()
    (tmp_path / ".ci" / "run").write_text((ROOT / ".ci" / "run").read_text())
    (tmp_path / "README.md").write_text("# x\n\n<!-- setup: -->\n```sh\n# only one\ntrue\n```\n")
    proc = subprocess.run(
        ["bash", str(tmp_path / ".ci" / "run")],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 2
    assert "exactly 2" in proc.stderr


def test_install_script_is_strict_and_checks_the_build() -> None:
    script = (ROOT / "scripts" / "install.sh").read_text()
    assert "set -euo pipefail" in script
    for pkg in ("libnetfilter-queue-dev", "nftables", "iproute2", "conntrack", "keepalived"):
        assert pkg in script
    assert "ln -sfn" in script  # relinking is harmless
    assert "import netfilterqueue" in script  # the compiled extension is checked
    proc = subprocess.run(
        ["bash", "-n", str(ROOT / "scripts" / "install.sh")], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
