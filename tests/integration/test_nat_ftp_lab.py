"""FTP through the NATed pair, across a failover (issue 8 with the FTP NAT helper).

Both firewalls masquerade the LAN to the WAN cluster address (198.18.2.1) and run the FTP
helper on port 21; the server has no default route (it reaches 198.18.2.0/24 only), and
pyftpdlib refuses a PORT that names another address than the control connection's peer
(``permit_foreign_addresses = False``). So an active transfer works only if the NAT node
rewrote the client's PORT to the public address and maps the server's data connection back to
the client (follow_master).

The client's control connection leaves from 198.18.1.200: "PORT 198,18,1,200,..." becomes
"PORT 198,18,2,1,..." -- two bytes shorter, so the control stream is shifted from there on.
One ftplib session makes an active transfer through fw-a, waits while fw-a dies and fw-b is
promoted (no ct_sync: fw-b tracked the same packets from the hub and computed the same offsets
and bindings), then makes a second active transfer and a passive one on the same control
connection through fw-b. If fw-b did not shift the client's next command by the same -2, the
server would wait forever for two bytes that never come.

Every process is started through the Lab (stopped by pid in ``lab.down()``); the namespaces
are removed by the fixture. Waits are for progress with generous deadlines.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from synclab import sync_toml

from pmct.lab.scenario import pmct_cli, wait_for
from pmct.lab.topology import Lab, LabError

pytestmark = [pytest.mark.netns, pytest.mark.slow]

SOURCE = "198.18.1.200"  # a client address whose text is longer than the public one's
PUBLIC = "198.18.2.1"
SERVER = "198.18.2.2"

NAT_TOML = """
[nat]
seed = "pmct-lab-ftp"

[[nat.snat]]
src = ["198.18.1.0/24"]
not_dst = ["198.18.1.0/24"]
masquerade = "wan0"

[helpers]
ftp = [21]
"""

FTPD = r"""
import logging, sys
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.ioloop import Select
from pyftpdlib.servers import FTPServer

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
auth = DummyAuthorizer()
auth.add_anonymous(sys.argv[1])


class Handler(FTPHandler):
    authorizer = auth
    permit_foreign_addresses = False  # a PORT must name the control connection's peer
    use_sendfile = False
    timeout = 600


FTPServer(("0.0.0.0", 21), Handler, ioloop=Select()).serve_forever()
"""

DRIVER = r"""
import ftplib, hashlib, json, os, sys, time

host, source, status, go = sys.argv[1:5]


def say(**kw):
    with open(status + ".tmp", "w") as f:
        json.dump(kw, f)
    os.replace(status + ".tmp", status)


def get(ftp, name):
    chunks = []
    ftp.retrbinary("RETR " + name, chunks.append)
    return hashlib.sha256(b"".join(chunks)).hexdigest()


ftp = ftplib.FTP(timeout=60, source_address=(source, 0))
ftp.connect(host, 21)
ftp.login()
ftp.set_pasv(False)
shas = {"one": get(ftp, "one.bin")}  # PORT through fw-a
say(step="first", shas=shas)
while not os.path.exists(go):
    time.sleep(0.05)
shas["two"] = get(ftp, "two.bin")  # PORT through fw-b, on the shifted control connection
ftp.set_pasv(True)
shas["three"] = get(ftp, "three.bin")  # PASV through fw-b
ftp.quit()
say(step="done", shas=shas)
"""


@pytest.fixture
def lab() -> Iterator[Lab]:
    lab = Lab()
    try:
        lab.up()
        lab.ip("server", "route", "del", "default")  # the server knows 198.18.2.0/24 only
        lab.ip("client", "addr", "add", f"{SOURCE}/24", "dev", "c0")
        yield lab
    finally:
        lab.down()


def start(lab: Lab, fw: str, role: str, *, sync: bool = False) -> None:
    extra = NAT_TOML + (sync_toml(fw) if sync else "")
    lab.start_node(fw, role=role, strict=False, tcp_loose=False, fail="closed", extra=extra)


def status_of(path: str) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(Path(path).read_text())
        return data
    except (FileNotFoundError, json.JSONDecodeError):
        return None


@pytest.mark.parametrize("how", ["tracked", "init-sync"])
def test_active_ftp_through_the_nat_pair_survives_failover(lab: Lab, how: str) -> None:
    """``tracked``: both nodes run from the start, without ct_sync. ``init-sync``: fw-b
    starts only after the first transfer (it missed the PORT and its rewrite) and gets the
    control connection from ct_sync's init sync -- the offsets travel as Ext.SEQADJ."""
    try:
        import pyftpdlib  # noqa: F401
    except ImportError:
        pytest.skip("needs pyftpdlib (pip install -e '.[test]')")
    late = how == "init-sync"
    start(lab, "fw-a", "active", sync=late)
    if not late:
        start(lab, "fw-b", "passive")
    root = Path(lab.run_dir) / "ftproot"
    root.mkdir()
    files = {name: os.urandom(size) for name, size in (("one.bin", 30_000), ("two.bin", 50_000),
                                                       ("three.bin", 20_000))}  # fmt: skip
    for name, data in files.items():
        (root / name).write_bytes(data)
    lab.start("ftpd", "server", [sys.executable, "-c", FTPD, str(root)])

    def listening() -> bool:
        if not lab.alive("ftpd"):
            raise LabError(f"ftpd exited:\n{lab.log_text('ftpd')[-3000:]}")
        return bool(lab.sh("server", ["ss", "-Hltn", "sport = :21"]).stdout.strip())

    wait_for("the FTP server to listen", listening, 20)
    status = f"{lab.run_dir}/driver.json"
    go = f"{lab.run_dir}/go"
    lab.start("driver", "client", [sys.executable, "-c", DRIVER, SERVER, SOURCE, status, go])

    def diag() -> str:
        return "\n".join(
            [
                "driver: " + lab.log_text("driver")[-2000:],
                "ftpd: " + lab.log_text("ftpd")[-2000:],
                *(f"{fw}: {lab.log_text(fw)[-1500:]}" for fw in ("fw-a", "fw-b")),
            ]
        )

    def reached(step: str) -> dict[str, Any] | None:
        st = status_of(status)
        if st is None or st.get("step") != step:
            if not lab.alive("driver") and (st is None or st.get("step") != step):
                raise LabError(f"driver exited before {step}:\n{diag()}")
            return None
        return st

    first = wait_for("the first active transfer", lambda: reached("first"), 60)
    assert first["shas"]["one"] == hashlib.sha256(files["one.bin"]).hexdigest(), diag()
    ftp_a = lab.control("fw-a", "status")["nat"]["ftp"]
    assert ftp_a["resized"] >= 1, ftp_a  # the PORT was rewritten with a length change
    if late:
        start(lab, "fw-b", "passive", sync=True)  # returns once ready: init sync done
        assert lab.control("fw-b", "status")["sync"]["counters"]["walks_received"] >= 1
        assert lab.control("fw-b", "status")["nat"]["ftp"]["resized"] == 0  # saw no PORT
    else:
        ftp_b = lab.control("fw-b", "status")["nat"]["ftp"]
        assert ftp_b["resized"] == ftp_a["resized"], (ftp_a, ftp_b)  # fw-b decided the same

    lab.stop("fw-a", signal.SIGKILL)
    lab.links_down("fw-a")
    p = pmct_cli("promote", "-s", lab.socket("fw-b"))
    assert (p.returncode, p.stdout.strip()) == (0, "active"), p.stderr
    Path(go).touch()

    done = wait_for("the transfers after the failover", lambda: reached("done"), 90)
    want = {n.split(".")[0]: hashlib.sha256(d).hexdigest() for n, d in files.items()}
    assert done["shas"] == want, diag()
    st = lab.control("fw-b", "status")
    # the second PORT, rewritten by fw-b (and the first one too when it tracked it)
    assert st["nat"]["ftp"]["resized"] >= (1 if late else 2), st["nat"]
    assert st["nat"]["seqadj_failed"] == 0
