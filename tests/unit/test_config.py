"""One source of truth for options: kwargs > MESHADAPTER_* env > defaults."""

from __future__ import annotations

import argparse

import pytest

from meshadapter.cli import build_parser
from meshadapter.config import MeshConfig, add_cli_arguments, config_kwargs_from_args


def test_kwargs_win_over_env_and_env_over_defaults():
    env = {"MESHADAPTER_CLUSTER": "fromenv", "MESHADAPTER_PORT": "5555",
           "MESHADAPTER_STICKY_FREE": "yes", "MESHADAPTER_HEARTBEAT_INTERVAL": "0.5"}
    cfg = MeshConfig.from_env(env, cluster="fromkw", port=None)
    assert cfg.cluster == "fromkw" and cfg.port == 5555 and cfg.sticky_free is True
    assert cfg.heartbeat_interval == 0.5 and cfg.discovery == "mdns"
    assert cfg.node_id  # generated


def test_every_field_has_an_env_var_and_a_cli_flag():
    parser = argparse.ArgumentParser()
    add_cli_arguments(parser)
    flags = {a.dest for a in parser._actions}
    for f in MeshConfig.fields():
        assert f.name in flags
        assert MeshConfig.env_name(f.name) == "MESHADAPTER_" + f.name.upper()
    args = parser.parse_args(["--cluster", "c", "--port", "7", "--sticky-free"])
    kw = config_kwargs_from_args(args)
    cfg = MeshConfig.from_env({}, **kw)
    assert (cfg.cluster, cfg.port, cfg.sticky_free) == ("c", 7, True)


@pytest.mark.parametrize(
    "kwargs, env, needle",
    [
        ({"discovery": "carrier-pigeon"}, {}, "discovery="),
        ({"discovery": "static"}, {}, "needs peers"),
        ({"port": 70000}, {}, "port="),
        ({"heartbeat_interval": 2.0, "heartbeat_timeout": 1.0}, {}, "heartbeat_timeout"),
        ({}, {"MESHADAPTER_PORT": "abc"}, "MESHADAPTER_PORT"),
        ({}, {"MESHADAPTER_STICKY_FREE": "maybe"}, "MESHADAPTER_STICKY_FREE"),
    ],
)
def test_bad_values_say_what_to_fix(kwargs, env, needle):  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=needle):
        MeshConfig.from_env(env, **kwargs)


def test_unknown_option_lists_valid_ones():
    with pytest.raises(TypeError, match="valid options are"):
        MeshConfig.from_env({}, clustr="x")


def test_static_peers_parsing():
    cfg = MeshConfig.from_env({}, discovery="static", peers="10.0.0.1:5, [::1]:6 ,")
    assert cfg.static_peers() == [("10.0.0.1", 5), ("::1", 6)]
    with pytest.raises(ValueError):
        MeshConfig.from_env({}, discovery="static", peers="nohostport").static_peers()


def test_cli_parser_builds():
    assert build_parser().parse_args(["status", "--json"]).json is True
