#!/usr/bin/env bash
# Install pmct and everything it needs on Debian 12, as root. Safe to run again.
#
#   bash scripts/install.sh          # system packages + venv with pmct, `pmct` on PATH
#   bash scripts/install.sh --test   # the same, plus the test extras (pytest, hypothesis, ruff, matplotlib)
#
# What it does:
#   1. apt: the tools pmct drives or is tested against (iproute2, nftables, conntrack, ...)
#      and what netfilterqueue compiles against (libnetfilter-queue-dev, python3-dev, gcc).
#      Skipped when every package is already installed, so a rerun is fast and offline.
#   2. A venv at <repo>/.venv (override: PMCT_VENV=/path), made with the python3 found on
#      PATH (Debian's /usr/bin/python3, or a pyenv one: both are 3.11), holding an editable
#      install of this checkout. The venv lives inside the checkout because an editable install
#      belongs to one checkout: two clones (a developer's tree, CI's fresh clone) each get their
#      own and never repoint each other's pmct. Nothing else on the machine's Pythons changes.
#   3. /usr/local/bin/pmct -> <venv>/bin/pmct (under CI=true only if there is no working link).
#   4. Checks that the compiled netfilterqueue extension and the other dependencies import.
set -euo pipefail

usage() { sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//'; }

extras="[accel]"
for arg in "$@"; do
    case "$arg" in
        --test) extras="[test,accel,study]" ;;  # study: matplotlib, so the plot tests run
        -h | --help) usage; exit 0 ;;
        *) echo "install.sh: unknown argument: $arg" >&2; usage >&2; exit 2 ;;
    esac
done

if [[ $(id -u) -ne 0 ]]; then
    echo "install.sh: run as root (it installs Debian packages and links /usr/local/bin/pmct)" >&2
    exit 1
fi

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${PMCT_VENV:-$repo/.venv}

# --- 1. Debian packages ------------------------------------------------------------------------
apt_packages=(
    python3 python3-venv python3-dev build-essential
    libnetfilter-queue-dev libnfnetlink-dev
    iptables nftables iproute2 iperf3 keepalived conntrack tcpdump ethtool curl iputils-ping
    conntrackd  # the kernel+conntrackd strategy of the live study (pmct/study/live.py)
)
missing=()
for p in "${apt_packages[@]}"; do
    if [[ $(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null) != installed ]]; then
        missing+=("$p")
    fi
done
if ((${#missing[@]})); then
    echo "install.sh: apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        "${missing[@]}" >/dev/null
else
    echo "install.sh: Debian packages already installed"
fi

# --- 2. venv + editable install ----------------------------------------------------------------
python=$(command -v python3)
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "install.sh: pmct needs Python >= 3.11; $python is $("$python" -V 2>&1)" >&2
    exit 1
fi
# A venv whose interpreter is gone (python upgraded or removed) is rebuilt, not patched.
if [[ -e $venv ]] && ! "$venv/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    2>/dev/null; then
    echo "install.sh: $venv is broken; recreating it"
    rm -rf -- "$venv"
fi
if [[ ! -e $venv/bin/python ]]; then
    echo "install.sh: creating venv $venv with $python ($("$python" -V 2>&1))"
    "$python" -m venv "$venv"
fi
echo "install.sh: pip install -e $repo$extras"
"$venv/bin/python" -m pip install -q --disable-pip-version-check -e "$repo$extras"

# --- 2b. compile the hot modules with mypyc (optional: pmct works interpreted if this fails) -----
if "$venv/bin/python" "$repo/scripts/build_accel.py"; then
    :
else
    echo "install.sh: warning: mypyc build failed, pmct runs interpreted (slower)" >&2
fi

# --- 3. pmct on PATH ---------------------------------------------------------------------------
# Under CI (CI=true, a throw-away clone) a working link to another checkout is left alone, so a
# CI run does not repoint the machine's pmct at a folder that is deleted afterwards.
if [[ ${CI:-} == true && -x /usr/local/bin/pmct && $(readlink -f /usr/local/bin/pmct) != "$venv"/* ]]; then
    echo "install.sh: CI: leaving /usr/local/bin/pmct -> $(readlink /usr/local/bin/pmct)"
else
    ln -sfn "$venv/bin/pmct" /usr/local/bin/pmct
fi

# --- 4. check ----------------------------------------------------------------------------------
"$venv/bin/python" - <<'EOF'
import importlib

import netfilterqueue  # compiled against libnetfilter-queue-dev

for mod in ("dpkt", "typer", "pyroute2", "pmct"):
    importlib.import_module(mod)
print(f"install.sh: ok: netfilterqueue {netfilterqueue.__file__}")
EOF
if [[ $extras == *test* ]]; then
    "$venv/bin/python" -c 'import pytest, hypothesis, matplotlib' && echo "install.sh: ok: test extras"
fi
echo "install.sh: pmct -> $(readlink /usr/local/bin/pmct)"
