"""Keys, key files, the ZAP decision and endpoint validation (no sockets)."""

from __future__ import annotations

import os
import stat

import pytest
import zmq
import zmq.asyncio
from zmq.utils import z85

from meshadapter import cli
from meshadapter.config import MeshConfig
from meshadapter.mesh import valid_endpoint
from meshadapter.metrics import Histogram, Metrics, prometheus_text
from meshadapter.security import (
    ZAP_DOMAIN,
    MeshSecurity,
    ZapHandler,
    hkdf_sha256,
    keygen,
    keypair_from_secret,
    load_key_file,
)


def test_hkdf_matches_rfc5869_case_1():
    ikm = bytes.fromhex("0b" * 22)
    salt = bytes.fromhex("000102030405060708090a0b0c")
    info = bytes.fromhex("f0f1f2f3f4f5f6f7f8f9")
    okm = hkdf_sha256(ikm, salt, info, 42)
    assert okm.hex() == (
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    )


def test_secret_derives_a_deterministic_valid_keypair():
    a, b = keypair_from_secret("correct horse battery staple"), keypair_from_secret(
        "correct horse battery staple")
    assert a == b
    assert len(a.public) == 40 and a.secret is not None and len(a.secret) == 40
    assert zmq.curve_public(a.secret) == a.public
    assert keypair_from_secret("another secret, long enough") != a
    with pytest.raises(ValueError):
        keypair_from_secret("")


def test_security_from_options_order_and_rotation():
    assert not MeshSecurity.from_options().enabled
    sec = MeshSecurity.from_options(secret="new-secret-0123456789, old-secret-0123456789")
    new, old = keypair_from_secret("new-secret-0123456789"), keypair_from_secret(
        "old-secret-0123456789")
    assert sec.enabled and sec.own == new
    assert sec.server_keys() == [new.public, old.public]
    assert sec.trusted_raw() == {z85.decode(new.public), z85.decode(old.public)}


def test_keygen_files_load_and_are_private(tmp_path):
    pub_path, sec_path = keygen(tmp_path / "keys")
    assert stat.S_IMODE(os.stat(sec_path).st_mode) == 0o600
    pair = load_key_file(sec_path)
    assert pair.secret is not None and zmq.curve_public(pair.secret) == pair.public
    assert load_key_file(tmp_path / "keys") == pair  # a directory means DIR/mesh.key_secret
    assert load_key_file(pub_path).secret is None
    with pytest.raises(ValueError, match="exists already"):
        keygen(tmp_path / "keys")
    # Own key first, a public-only key of another cluster member trusted too.
    other_pub, _ = keygen(tmp_path / "other")
    sec = MeshSecurity.from_options(key_file=f"{sec_path},{other_pub}")
    assert sec.own == pair and len(sec.trusted) == 2
    with pytest.raises(ValueError, match="only public keys"):
        MeshSecurity.from_options(key_file=str(pub_path))
    with pytest.raises(ValueError, match="does not exist"):
        MeshSecurity.from_options(key_file=str(tmp_path / "missing"))
    (tmp_path / "junk.key").write_text("not a certificate")
    with pytest.raises(ValueError):
        load_key_file(tmp_path / "junk.key")


def test_keygen_command(tmp_path, capsys):
    assert cli.main(["keygen", str(tmp_path / "k")]) == 0
    assert (tmp_path / "k" / "mesh.key_secret").exists()
    assert "public key" in capsys.readouterr().out
    assert cli.main(["keygen", str(tmp_path / "k")]) == 2  # refuses to overwrite


def test_config_secret_from_env_and_not_in_repr():
    cfg = MeshConfig.from_env({"MESHADAPTER_SECRET": "s3cr3t-value-0123456789"})
    assert cfg.secret == "s3cr3t-value-0123456789"
    assert "s3cr3t" not in repr(cfg)
    with pytest.raises(ValueError):
        MeshConfig.from_env({}, max_peers=0)


def test_zap_decision():
    ctx = zmq.Context()
    try:
        good = keypair_from_secret("good-secret-0123456789")
        bad = keypair_from_secret("bad-secret-0123456789")
        actx = zmq.asyncio.Context.shadow(ctx.underlying)
        zap = ZapHandler(actx, {good.public_raw})
        try:
            def req(mech: bytes, creds: list[bytes], domain: bytes = ZAP_DOMAIN) -> bytes:
                return zap.decide([b"1.0", b"1", domain, b"127.0.0.1", b"", mech, *creds])[0]

            assert req(b"CURVE", [good.public_raw]) == b"200"
            assert req(b"CURVE", [bad.public_raw]) == b"400"
            assert req(b"NULL", []) == b"400"
            assert req(b"PLAIN", [b"user", b"pass"]) == b"400"
            assert req(b"CURVE", [good.public_raw], domain=b"other") == b"400"
            assert req(b"CURVE", [good.public_raw, b"x"]) == b"400"
            assert zap.decide([b"2.0"])[0] == b"500"
        finally:
            zap.close()
    finally:
        ctx.term()


@pytest.mark.parametrize("ep,ok", [
    ("tcp://127.0.0.1:5555", True), ("tcp://[::1]:5555", True), ("tcp://node-1.local:80", True),
    ("tcp://*:5555", False), ("tcp://0.0.0.0:5555", False), ("ipc:///tmp/x", False),
    ("inproc://zeromq.zap.01", False), ("tcp://a:0", False), ("tcp://a:70000", False),
    ("tcp://a b:1", False), ("tcp://:1", False), ("tcp://h:1" + "0" * 400, False), (5, False),
])
def test_valid_endpoint(ep, ok):
    assert valid_endpoint(ep) is ok


def test_histogram_and_prometheus_text():
    h = Histogram()
    for v in (0.0002, 0.0002, 0.003, 20.0):
        h.observe(v)
    snap = h.snapshot()
    assert snap["count"] == 4 and snap["buckets"]["+Inf"] == 4
    assert snap["buckets"]["0.00025"] == 2 and snap["p50"] == 0.00025
    m = Metrics()
    m.observe("request_seconds", 0.01)
    m.received("broadcast", 10)
    text = prometheus_text(m.snapshot(), "n1")
    assert 'meshadapter_request_seconds_bucket{node="n1",le="0.01"} 1' in text
    assert 'meshadapter_frames_in_by_type{node="n1",kind="broadcast"} 1' in text


def test_prometheus_collector():
    pytest.importorskip("prometheus_client")
    from prometheus_client import CollectorRegistry, generate_latest

    from meshadapter.metrics import MeshCollector

    m = Metrics()
    m.observe("request_seconds", 0.002)
    m.gauges["peers"] = 2
    m.decode_errors["malformed"] += 3
    reg = CollectorRegistry(auto_describe=False)
    reg.register(MeshCollector(lambda: {**m.snapshot(), "node_id": "n1"}))  # type: ignore[arg-type]
    text = generate_latest(reg).decode()
    assert 'meshadapter_peers{node="n1"} 2.0' in text
    assert 'meshadapter_decode_errors_total{kind="malformed",node="n1"} 3.0' in text
    assert 'meshadapter_request_seconds_bucket{le="0.0025",node="n1"} 1.0' in text
