"""Parsing the [nat] section: good rules become frozen data, bad ones name their key."""

from __future__ import annotations

import socket

import pytest

from pmct.nat.rules import DnatRule, NatRuleError, Prefix, parse_nat


def test_parse_full_section() -> None:
    cfg = parse_nat(
        {
            "seed": "x",
            "snat": [
                {
                    "src": ["10.0.0.0/24"],
                    "not_dst": "10.0.0.0/8",
                    "to": "198.18.1.1",
                    "ports": "1024-2047",
                    "proto": "udp",
                },
                {"src": "10.1.0.0/16", "masquerade": "wan0"},
            ],
            "dnat": [
                {
                    "dst": "198.18.1.1",
                    "proto": "tcp",
                    "dport": 80,
                    "to": "10.0.0.10",
                    "to_port": 8080,
                }
            ],
        }
    )
    s0, s1 = cfg.snat
    assert (
        s0.ports == (1024, 2047) and s0.proto == 17 and s0.to == (socket.inet_aton("198.18.1.1"),)
    )
    assert s1.masquerade == "wan0" and s1.to == ()
    assert not s1.matches(6, socket.inet_aton("10.1.2.3"), socket.inet_aton("8.8.8.8"))
    resolved = cfg.resolve({"wan0": [socket.inet_aton("198.18.9.9")]})
    assert resolved.snat[1].matches(6, socket.inet_aton("10.1.2.3"), socket.inet_aton("8.8.8.8"))
    (d,) = cfg.dnat
    assert isinstance(d, DnatRule) and d.target_port(80) == 8080
    assert cfg.seed == b"x" and cfg.enabled
    with pytest.raises(AttributeError):
        d.to_port = 1  # type: ignore[misc]


def test_prefix() -> None:
    p = Prefix.parse("10.0.0.0/8")
    assert p.contains(socket.inet_aton("10.200.0.1")) and not p.contains(
        socket.inet_aton("11.0.0.1")
    )
    assert not p.contains(socket.inet_pton(socket.AF_INET6, "::1"))
    assert str(Prefix.parse("2001:db8::/32")) == "2001:db8::/32"


@pytest.mark.parametrize(
    ("section", "path"),
    [
        ({"snat": [{"to": "1.2.3.4"}]}, "nat.snat[0].src"),
        ({"snat": [{"src": "10.0.0.0/8"}]}, "nat.snat[0].to"),
        (
            {"snat": [{"src": "10.0.0.0/8", "to": "1.2.3.4", "masquerade": "wan0"}]},
            "nat.snat[0].to",
        ),
        ({"snat": [{"src": "10.0.0.0/33", "to": "1.2.3.4"}]}, "nat.snat[0].src"),
        ({"snat": [{"src": "10.0.0.0/8", "to": "1.2.3.4", "ports": "9-3"}]}, "nat.snat[0].ports"),
        ({"snat": [{"src": "10.0.0.0/8", "to": "1.2.3.4", "prot": "tcp"}]}, "nat.snat[0].prot"),
        (
            {"dnat": [{"dst": "1.2.3.4", "proto": "tcp", "to": "10.0.0.1", "to_port": 80}]},
            "nat.dnat[0].to_port",
        ),
        (
            {"dnat": [{"dst": "1.2.3.4", "proto": "icmp", "dport": 1, "to": "10.0.0.1"}]},
            "nat.dnat[0].dport",
        ),
        ({"dnat": [{"dst": "1.2.3.4", "proto": "tcp", "to": "2001:db8::1"}]}, "nat.dnat[0].to"),
        (
            {
                "dnat": [
                    {
                        "dst": "1.2.3.4",
                        "proto": "tcp",
                        "dport": "65000-65535",
                        "to": "10.0.0.1",
                        "to_port": 1000,
                    }
                ]
            },
            None,
        ),
        (
            {
                "dnat": [
                    {
                        "dst": "1.2.3.4",
                        "proto": "tcp",
                        "dport": "60000-65535",
                        "to": "10.0.0.1",
                        "to_port": 62000,
                    }
                ]
            },
            "nat.dnat[0].to_port",
        ),
        ({"seed": 3}, "nat.seed"),
        ({"snat": {"src": "10.0.0.0/8"}}, "nat.snat"),
    ],
)
def test_errors_name_the_key(section: dict[str, object], path: str | None) -> None:
    if path is None:
        parse_nat(section)
        return
    with pytest.raises(NatRuleError) as ei:
        parse_nat(section)
    assert ei.value.path == path


def test_empty() -> None:
    assert not parse_nat(None).enabled and not parse_nat({}).enabled
