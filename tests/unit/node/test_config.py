"""Configuration loading (pmct/config.py): defaults, the embedded file, and error messages."""

from __future__ import annotations

import dataclasses
import re
import textwrap
from pathlib import Path

import pytest

from pmct.config import DEFAULT_TOML, key_lines, load_config, parse_config
from pmct.conntrack.settings import Settings, Timeouts
from pmct.errors import ConfigError
from pmct.node.policy import Action

REPO = Path(__file__).resolve().parents[3]
CONFIGS = REPO / "configs"


def test_embedded_default_is_byte_equal_to_configs_pmct_toml() -> None:
    assert (CONFIGS / "pmct.toml").read_bytes() == DEFAULT_TOML.encode()


def test_default_file_and_no_file_give_the_same_config() -> None:
    a = load_config()
    b = load_config(CONFIGS / "pmct.toml")
    assert dataclasses.replace(a, source="") == dataclasses.replace(b, source="")


def test_default_conntrack_section_is_the_kernel_defaults() -> None:
    # The annotated file spells out every engine knob and timeout; its values must be the
    # engine's defaults, so a new Settings field cannot go undocumented or drift.
    assert load_config().conntrack == Settings()
    for f in dataclasses.fields(Settings):
        if f.name != "timeouts":
            assert re.search(rf"^{f.name} = ", DEFAULT_TOML, re.M), f.name
    for f in dataclasses.fields(Timeouts):
        if f.name != "tcp":
            assert re.search(rf"^{f.name} = ", DEFAULT_TOML, re.M), f.name


def test_default_policy() -> None:
    cfg = load_config()
    assert cfg.node.role == "passive"
    assert cfg.queue.fail_open
    assert cfg.policy.default == Action.DROP
    assert [r.action for r in cfg.policy.rules] == [
        Action.ACCEPT,
        Action.DROP,
        Action.ACCEPT,
        Action.ACCEPT,
    ]
    assert cfg.metrics.address() is None


@pytest.mark.parametrize("name", ["node-a.toml", "node-b.toml"])
def test_example_configs_load(name: str) -> None:
    cfg = load_config(CONFIGS / name)
    assert cfg.interfaces.data == ("lan0", "wan0")
    assert cfg.interfaces.sync == "sync0"
    assert cfg.conntrack.tcp_loose is False
    lan = cfg.cluster.interface("lan0")
    assert lan is not None and lan.mac == "02:00:00:c1:00:01"
    assert lan.addresses == ("198.18.1.1/24",)
    assert cfg.node.control_socket.endswith("/control.sock")
    assert cfg.node.state_file.endswith("/role")


def test_node_a_and_b_differ_only_in_identity() -> None:
    a, b = load_config(CONFIGS / "node-a.toml"), load_config(CONFIGS / "node-b.toml")
    assert (a.node.role, b.node.role) == ("active", "passive")
    assert a.node.run_dir != b.node.run_dir
    assert dataclasses.replace(a, node=b.node, source="") == dataclasses.replace(b, source="")


def test_partial_file_keeps_other_defaults() -> None:
    cfg = parse_config("[queue]\nnum = 7\n[conntrack.timeouts]\ntcp_established = 3600\n")
    assert cfg.queue.num == 7
    assert cfg.queue.fail == "open"
    assert cfg.conntrack.timeouts.tcp[3] == 3600.0
    assert cfg.conntrack.timeouts.tcp[1] == 120.0
    assert cfg.conntrack.timeouts.udp_unreplied == 30.0
    assert cfg.policy.rules == ()  # rules are replaced, not merged: none given, none kept


def test_netlink_backend_with_gso() -> None:
    cfg = parse_config('[queue]\nbackend = "netlink"\ngso = true\n')
    assert (cfg.queue.backend, cfg.queue.gso) == ("netlink", True)
    assert load_config().queue.backend == "netlink"  # the default: GSO needs nothing else
    assert parse_config("[queue]\ngso = true\n").queue.gso


def test_rule_fields() -> None:
    cfg = parse_config(
        textwrap.dedent(
            """\
            [[policy.rule]]
            ctstate = ["new"]
            direction = "original"
            in = ["lan0"]
            out = "wan0"
            proto = ["tcp", 17]
            src = "198.18.1.0/24"
            dst = ["198.18.2.2", "2001:db8::/32"]
            sport = "1024-65535"
            dport = [53, "80-90"]
            action = "reject"
            comment = "x"
            """
        )
    )
    (r,) = cfg.policy.rules
    assert r.action == Action.REJECT
    assert r.ctstates == (1,)
    assert r.direction == 0
    assert r.iif == frozenset({"lan0"}) and r.oif == frozenset({"wan0"})
    assert r.protos == frozenset({6, 17})
    assert r.sports == ((1024, 65535),)
    assert r.dports == ((53, 53), (80, 90))
    assert r.src is not None and len(r.src) == 1
    assert r.dst is not None and [n.l3 for n in r.dst] == [4, 6]
    assert cfg.policy.ruleset().needs_oif


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as e:
        parse_config(textwrap.dedent(text), "t.toml")
    return str(e.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[queue]\nnmu = 1\n", "t.toml:2: queue.nmu: unknown key; did you mean 'num'?"),
        ("[nodes]\nname = 'x'\n", "t.toml:1: nodes: unknown key; did you mean 'node'?"),
        ("[node]\nrole = 'master'\n", "t.toml:2: node.role: must be one of 'active', 'passive'"),
        ("[queue]\nnum = '0'\n", "t.toml:2: queue.num: must be an integer, not a string"),
        ("[queue]\nnum = 70000\n", "queue.num: must be between 0 and 65535, not 70000"),
        ("[queue]\nfail = 'maybe'\n", "t.toml:2: queue.fail: must be one of 'open', 'closed'"),
        ("[queue]\ngso = 1\n", "t.toml:2: queue.gso: must be true or false, not an integer"),
        (
            '[queue]\nbackend = "netfilterqueue"\ngso = true\n',
            't.toml:3: queue.gso: needs backend = "netlink"',
        ),
        (
            "[queue]\ngso = true\n[conntrack]\nchecksum = true\n",
            "t.toml:4: conntrack.checksum: needs queue.gso = false",
        ),
        ("[queue]\nbackend = 'nfq'\n", "t.toml:2: queue.backend: must be one of"),
        (
            "[queue]\npassive_capture = 'pcap'\n",
            "t.toml:2: queue.passive_capture: must be one of 'ring', 'queue'",
        ),
        ("[queue]\nring_size = 1024\n", "t.toml:2: queue.ring_size: must be between"),
        ("[queue]\nverdict_thread = 'no'\n", "t.toml:2: queue.verdict_thread: must be true"),
        ("[node]\nrun_dir = 'run'\n", "node.run_dir: must be an absolute path"),
        ("[interfaces]\ndata = 'lan0'\n", "t.toml:2: interfaces.data: must be an array"),
        (
            "[interfaces]\ndata = ['lan0', 'a/b']\n",
            "t.toml:2: interfaces.data[1]: 'a/b' is not a valid interface name",
        ),
        (
            "[interfaces]\ndata = ['lan0']\nsync = 'lan0'\n",
            "t.toml:3: interfaces.sync: 'lan0' is also a data interface",
        ),
        (
            "[conntrack]\ntcp_loose = 'yes'\n",
            "t.toml:2: conntrack.tcp_loose: must be true or false",
        ),
        (
            "[conntrack.timeouts]\ntcp_established = -1\n",
            "t.toml:2: conntrack.timeouts.tcp_established: must not be negative",
        ),
        (
            "[conntrack.timeouts]\ntcp_establised = 1\n",
            "did you mean 'tcp_established'?",
        ),
        (
            "[cluster.interface.eth9]\nmac = '02:00:00:00:00:01'\n",
            "t.toml:1: cluster.interface.eth9: 'eth9' is not one of interfaces.data",
        ),
        (
            "[cluster.interface.lan0]\nmac = '02:00:00:00:00'\n",
            "t.toml:2: cluster.interface.lan0.mac: '02:00:00:00:00' is not a MAC address",
        ),
        (
            "[cluster.interface.lan0]\nmac = '03:00:00:00:00:01'\n",
            "cluster.interface.lan0.mac: must be a unicast MAC",
        ),
        (
            "[cluster.interface.lan0]\naddresses = ['198.18.1.300/24']\n",
            "t.toml:2: cluster.interface.lan0.addresses[0]: '198.18.1.300/24' is not an address",
        ),
        ("[policy]\ndefault = 'allow'\n", "t.toml:2: policy.default: must be one of"),
        ("[policy]\nreject_mark = 3\n", "policy.reject_mark: must be a single bit"),
        ("[metrics]\nlisten = 'localhost'\n", "t.toml:2: metrics.listen: 'localhost' is not"),
        ("[queue\nnum = 1\n", "t.toml: not valid TOML: "),
    ],
)
def test_errors_name_the_key_and_line(text: str, expected: str) -> None:
    assert expected in error_of(text)


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ("ctstate = 'new'", "t.toml:5: policy.rule[1]: needs an action"),
        ("action = 'allow'", "t.toml:6: policy.rule[1].action: must be one of"),
        ("action = 'accept'\nctstate = 'neww'", "t.toml:7: policy.rule[1].ctstate: must be one of"),
        (
            "action = 'accept'\ndport = 80",
            "t.toml:7: policy.rule[1].dport: needs a proto with ports",
        ),
        (
            "action = 'accept'\nproto = ['tcp', 'icmp']\ndport = 80",
            "t.toml:8: policy.rule[1].dport: every proto of this rule must have ports",
        ),
        (
            "action = 'accept'\nproto = 'udp'\nsyn = true",
            "t.toml:8: policy.rule[1].syn: needs proto",
        ),
        (
            "action = 'accept'\nproto = 'tcp'\ndport = '90-80'",
            "t.toml:8: policy.rule[1].dport: range '90-80' is backwards",
        ),
        (
            "action = 'accept'\nin = 'sync0'",
            "t.toml:7: policy.rule[1].in: 'sync0' is not a data interface",
        ),
        ("action = 'accept'\nsrc = '10.0.0.0/33'", "policy.rule[1].src: '10.0.0.0/33' is not"),
        ("action = 'accept'\ndirektion = 'reply'", "policy.rule[1].direktion: unknown key"),
    ],
)
def test_rule_errors_point_at_the_rule(rule: str, expected: str) -> None:
    text = "[[policy.rule]]\nctstate = 'new'\naction = 'accept'\n\n[[policy.rule]]\n" + rule + "\n"
    assert expected in error_of(text)


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")


def test_key_lines() -> None:
    text = textwrap.dedent(
        """\
        # comment
        [node]
        name = "a"  # trailing
        [interfaces]
        data = [
          "lan0",
          "x = y",
        ]
        sync = "s"
        [[policy.rule]]
        action = "drop"
        [[policy.rule]]
        "action" = "accept"
        [cluster.interface.lan0]
        mac = "02:00:00:00:00:01"
        """
    )
    lines = key_lines(text)
    assert lines["node"] == 2
    assert lines["node.name"] == 3
    assert lines["interfaces.data"] == 5
    assert lines["interfaces.sync"] == 9
    assert "interfaces.x" not in lines
    assert lines["policy.rule[0].action"] == 11
    assert lines["policy.rule[1].action"] == 13
    assert lines["cluster.interface.lan0.mac"] == 15
