"""Flower's deployment engine on loopback, with TLS: one SuperLink, two SuperNodes, one round.

Started through ``decentdiff fed superlink`` / ``fed supernode`` (which exec Flower's executables,
so each keeps the PID we started); every process started here, and every process Flower spawned
under them, is stopped by its PID.
"""

import datetime
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("flwr")
x509 = pytest.importorskip("cryptography.x509")

from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pem(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def make_certificates(d: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and a server certificate for 127.0.0.1 / localhost signed by it."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "decentdiff test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return (
        _pem(d / "ca.pem", ca.public_bytes(pem)),
        _pem(d / "server.pem", cert.public_bytes(pem)),
        _pem(
            d / "server.key",
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        ),
    )


def _descendants(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids = [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
        for k in kids:
            out += [k, *_descendants(k)]
    return out


def _stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM each started process and everything Flower spawned under it, by PID; then reap."""
    pids: list[int] = []
    for p in procs:
        pids += [*_descendants(p.pid), p.pid]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    deadline = time.time() + 10
    for pid in pids:
        while time.time() < deadline and Path(f"/proc/{pid}").exists():
            stat = (
                Path(f"/proc/{pid}/stat").read_text() if Path(f"/proc/{pid}/stat").exists() else ""
            )
            if ") Z " in stat:  # a zombie: already dead, only waiting for its parent
                break
            time.sleep(0.1)
        if Path(f"/proc/{pid}").exists() and ") Z " not in Path(f"/proc/{pid}/stat").read_text():
            os.kill(pid, signal.SIGKILL)


APP_TOML = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "decentdiff-fed-loopback"
version = "1.0.0"
description = "decentdiff federated app (test)"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "decentdiff"

[tool.flwr.app.components]
serverapp = "decentdiff.federated.server_app:app"
clientapp = "decentdiff.federated.client_app:app"

[tool.flwr.app.config]
run-dir = "{run}"
data = "digits"
preset = "tiny"
method = "ulatdec"
clients = 2
rounds = 1
local-steps = 2
batch = 16
image-shape = "1,8,8"
"""


@pytest.mark.slow
def flower_env(home: Path) -> dict[str, str]:
    """The environment of Flower's processes: FLWR_HOME (its config.toml), no telemetry or update
    check, this interpreter's tools first on PATH (Flower spawns its own), this checkout's src."""
    return {
        **os.environ,
        "FLWR_HOME": str(home),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
    }


def test_superlink_and_two_supernodes_over_tls_run_one_round(tmp_path):
    ca, cert, key = make_certificates(tmp_path)
    port = _free_port()
    run = tmp_path / "run"
    app = tmp_path / "app"
    app.mkdir()
    (app / "pyproject.toml").write_text(APP_TOML.format(run=run))
    home = tmp_path / "flwr-home"
    home.mkdir()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "loop"\n\n[superlink.loop]\naddress = "127.0.0.1:{port}"\n'
        f'root-certificates = "{ca}"\n'
    )
    env = flower_env(home)
    fed = [sys.executable, "-c", "from decentdiff.cli.fed import fed_app; fed_app()"]
    logs = {name: (tmp_path / f"{name}.log").open("w") for name in ("link", "node0", "node1")}
    procs: list[subprocess.Popen] = []
    try:
        procs.append(
            subprocess.Popen(
                [
                    *fed,
                    "superlink",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--ssl-certfile",
                    str(cert),
                    "--ssl-keyfile",
                    str(key),
                    "--ssl-ca-certfile",
                    str(ca),
                ],
                env=env,
                stdout=logs["link"],
                stderr=subprocess.STDOUT,
            )
        )
        for i in range(2):
            procs.append(
                subprocess.Popen(
                    [
                        *fed,
                        "supernode",
                        "--superlink",
                        f"127.0.0.1:{port}",
                        "--data",
                        "digits",
                        "--partition",
                        f"{i}/2",
                        "--root-certificates",
                        str(ca),
                        "--out",
                        str(tmp_path / f"silo{i}"),
                        "--port",
                        str(_free_port()),
                        "--threads",
                        "1",
                    ],
                    env=env,
                    stdout=logs[f"node{i}"],
                    stderr=subprocess.STDOUT,
                )
            )
        started = None
        # The SuperLink needs a few seconds before it accepts runs: retry until it does (the
        # evidence), with a deadline only a hung machine reaches.
        accept_by = time.time() + 300
        while started is None and time.time() < accept_by:
            assert all(p.poll() is None for p in procs), "a Flower process died; see the logs"
            time.sleep(1)
            res = subprocess.run(
                [str(BIN / "flwr"), "run", str(app), "loop"],
                env=env,
                capture_output=True,
                text=True,
            )
            if res.returncode == 0 and "Successfully started run" in res.stdout:
                started = res.stdout
                break
        assert started, res.stdout + res.stderr
        rows_path = run / "federated" / "rounds.jsonl"
        deadline = time.time() + 600  # waits on the files below; only a hung run reaches this
        while time.time() < deadline and not (
            rows_path.is_file()
            and (tmp_path / "silo1" / "meta.json").is_file()
            and (tmp_path / "silo0" / "meta.json").is_file()
        ):
            assert all(p.poll() is None for p in procs), "a Flower process died; see the logs"
            time.sleep(0.5)
        rows = [json.loads(r) for r in rows_path.read_text().splitlines()]
        assert len(rows) == 1 and rows[0]["complete"] and rows[0]["accepted"] == 2
        assert sorted(c["partition-id"] for c in rows[0]["clients"]) == [0, 1]
        # Each silo kept its personal model locally; the server holds only the shared parts.
        for i in range(2):
            meta = json.loads((tmp_path / f"silo{i}" / "meta.json").read_text())
            assert meta["client"] == i and meta["kind"] == "generative"
        assert not (run / "federated" / "clients").exists()
    finally:
        _stop(procs)
        for f in logs.values():
            f.close()
    assert all(p.poll() is not None for p in procs)
