from __future__ import annotations

from pathlib import Path

import pytest

from pmct.errors import ConfigError
from pmct.study.spec import STRATEGIES, load_study, parse_study

CONFIGS = Path(__file__).resolve().parents[3] / "configs" / "studies"


@pytest.mark.parametrize("name", ["default.toml", "large.toml"])
def test_shipped_studies_parse(name: str) -> None:
    spec = load_study(CONFIGS / name)
    assert spec.strategies == STRATEGIES
    assert None in spec.faults.restart_at and spec.faults.failover_at == tuple(
        sorted(spec.faults.failover_at)
    )
    assert spec.source == CONFIGS / name


def test_defaults_and_never() -> None:
    spec = parse_study({"faults": {"restart_at": ["never", 5, 7.5]}})
    assert spec.faults.restart_at == (None, 5.0, 7.5)
    assert spec.traffic.source == "generate" and spec.seed == 1


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"study": {"sed": 1}}, "study file.study: unknown key(s): sed"),
        ({"bogus": {}}, "study file: unknown key(s): bogus"),
        ({"study": {"strategies": ["replicate", "magic"]}}, "'magic' is not one of"),
        ({"study": {"seed": "1"}}, "study.seed: must be an integer"),
        ({"faults": {"miss_rate": [0.1, 1.5]}}, "faults.miss_rate: 1.5 is out of range"),
        ({"faults": {"miss_rate": []}}, "faults.miss_rate: must be a non-empty list"),
        ({"faults": {"restart_at": ["soon"]}}, "faults.restart_at: must be a number"),
        ({"faults": {"miss_model": ["random", "random"]}}, "lists a value twice"),
        ({"traffic": {"source": "pcap"}}, "traffic.pcap_dir: required"),
        ({"traffic": {"generate": {"tcp": 0, "udp": 0, "icmp": 0}}}, "must be > 0"),
        ({"sync": {"send_window": 1}}, "sync.send_window: must be true or false"),
        ({"metrics": {"probe_packets": 0}}, "metrics.probe_packets: 0 is out of range"),
    ],
)
def test_errors_name_the_key(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=None) as e:
        parse_study(data)
    assert message in str(e.value)


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    p = tmp_path / "s.toml"
    p.write_text("[study]\nname = \n")
    with pytest.raises(ConfigError, match=r"s\.toml: not valid TOML"):
        load_study(p)
    p.write_text("[faults]\nfailover = [1]\n")
    with pytest.raises(ConfigError, match=r"s\.toml: study file\.faults: unknown key"):
        load_study(p)
    with pytest.raises(ConfigError, match="cannot read"):
        load_study(tmp_path / "missing.toml")


def test_pcap_dir_is_relative_to_the_file(tmp_path: Path) -> None:
    p = tmp_path / "s.toml"
    p.write_text('[traffic]\nsource = "pcap"\npcap_dir = "caps"\n')
    assert load_study(p).traffic.pcap_dir == tmp_path / "caps"
