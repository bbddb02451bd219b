"""Flower's deployment engine on loopback, with TLS: one SuperLink and its SuperNodes, one round
(plain ULATDEC with two SuperNodes; FULL with SecAgg+ with three).

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
from collections.abc import Callable
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


def deploy(tmp_path: Path, app_toml: str, nodes: int, done: Callable[[], bool]) -> None:
    """One run on Flower's deployment engine over TLS, on loopback: a SuperLink, ``nodes``
    SuperNodes (digits, ``--partition i/nodes``, ``--out tmp_path/silo<i>``, one thread each),
    then ``flwr run`` of the app whose pyproject.toml is ``app_toml``; returns once ``done()``
    holds (the run's files: the evidence), after stopping every process by its PID. Logs:
    ``tmp_path/link.log``, ``tmp_path/node<i>.log``."""
    ca, cert, key = make_certificates(tmp_path)
    port = _free_port()
    app = tmp_path / "app"
    app.mkdir()
    (app / "pyproject.toml").write_text(app_toml)
    home = tmp_path / "flwr-home"
    home.mkdir()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "loop"\n\n[superlink.loop]\naddress = "127.0.0.1:{port}"\n'
        f'root-certificates = "{ca}"\n'
    )
    env = flower_env(home)
    fed = [sys.executable, "-c", "from decentdiff.cli.fed import fed_app; fed_app()"]
    names = ["link", *(f"node{i}" for i in range(nodes))]
    logs = {name: (tmp_path / f"{name}.log").open("w") for name in names}
    tls = ["--ssl-certfile", str(cert), "--ssl-keyfile", str(key), "--ssl-ca-certfile", str(ca)]
    commands = {"link": ["superlink", "--host", "127.0.0.1", "--port", str(port), *tls]}
    for i in range(nodes):
        commands[f"node{i}"] = [
            "supernode",
            "--superlink",
            f"127.0.0.1:{port}",
            "--data",
            "digits",
            "--partition",
            f"{i}/{nodes}",
            "--root-certificates",
            str(ca),
            "--out",
            str(tmp_path / f"silo{i}"),
            "--port",
            str(_free_port()),
            "--threads",
            "1",
        ]
    procs: list[subprocess.Popen] = []
    try:
        for name in names:
            procs.append(
                subprocess.Popen(
                    [*fed, *commands[name]], env=env, stdout=logs[name], stderr=subprocess.STDOUT
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
        deadline = time.time() + 600  # waits on the run's files; only a hung run reaches this
        while time.time() < deadline and not done():
            assert all(p.poll() is None for p in procs), "a Flower process died; see the logs"
            time.sleep(0.5)
        assert done(), "the run did not finish; see the logs"
    finally:
        _stop(procs)
        for f in logs.values():
            f.close()
    assert all(p.poll() is not None for p in procs)


@pytest.mark.slow
def test_superlink_and_two_supernodes_over_tls_run_one_round(tmp_path):
    run = tmp_path / "run"
    rows_path = run / "federated" / "rounds.jsonl"
    silos = [tmp_path / f"silo{i}" / "meta.json" for i in range(2)]
    deploy(
        tmp_path,
        APP_TOML.format(run=run),
        2,
        lambda: rows_path.is_file() and all(m.is_file() for m in silos),
    )
    rows = [json.loads(r) for r in rows_path.read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["complete"] and rows[0]["accepted"] == 2
    assert sorted(c["partition-id"] for c in rows[0]["clients"]) == [0, 1]
    # Each silo kept its personal model locally; the server holds only the shared parts.
    for i in range(2):
        meta = json.loads(silos[i].read_text())
        assert meta["client"] == i and meta["kind"] == "generative"
    assert not (run / "federated" / "clients").exists()


#: SecAgg+ takes at least 3 clients (secagg.validate: with 2, each could subtract its own update
#: from the sum, and Flower needs > 2 shares); its threshold is then a majority of 3 shares, 2.
SECAGG_CLIENTS = 3


@pytest.mark.slow
def test_secagg_round_over_tls_is_the_weighted_mean_of_the_clients_updates(tmp_path):
    """One FULL round with ``secagg = true`` on the deployment engine (three SuperNodes, each a
    separate process, talking gRPC over TLS to the SuperLink): the round is recorded as SecAgg+'s,
    with every client accepted and each uploading a masked vector (int64: more than 8 bytes a
    weight, where a plain float32 update is 4), and the new global model is the plain weighted
    mean of the clients' updates within SecAgg+'s quantisation bound (``secagg.error_bound``, as
    test_secagg.py checks in-process).

    The clients' trained models never leave their processes (FULL keeps nothing in ``--out``), so
    the updates are replayed here: each client's round-1 training from the same settings (the
    run's fed.json), partition, initial model and one thread; the replay must reproduce what each
    client reported to the server (its loss bit for bit, its weight, its steps) before it serves
    as the oracle. The check must reject the initial model and each single client's update (each
    is more than the bound from the mean somewhere: the round moved the model by ~7 bounds), so
    passing it is matching the mean. The three partitions hold 480, 479 and 479 images: the
    weighting itself is test_secagg.py's to check (there with weights 77..512)."""
    import numpy as np
    import torch

    from decentdiff.federated import parts as P
    from decentdiff.federated import secagg as S
    from decentdiff.federated.client import client_data, client_round
    from decentdiff.federated.store import global_dir, initial_arrays, read_rounds, read_settings
    from decentdiff.training.checkpoint import load_tensors, read_meta

    n = SECAGG_CLIENTS
    run = tmp_path / "run"
    config = (
        APP_TOML.format(run=run)
        .replace('method = "ulatdec"', 'method = "full"')
        .replace("clients = 2", f"clients = {n}")
    ) + "secagg = true\n"
    saved = run / "federated" / "global" / "meta.json"  # written last, after rounds.jsonl's row
    deploy(tmp_path, config, n, saved.is_file)

    s = read_settings(run)
    assert s is not None and s.secagg and s.method == "full" and s.clients == n
    assert global_dir(run, s.method_spec) == saved.parent
    (row,) = read_rounds(run)
    assert row["complete"] and row["accepted"] == n
    assert row["secagg"]["shares"] == n and row["secagg"]["threshold"] == 2
    assert row["secagg"]["failures"] == []
    clients = sorted(row["clients"], key=lambda c: c["partition-id"])
    assert [c["partition-id"] for c in clients] == list(range(n))
    assert all(c["status"] == "ok" for c in clients)
    init = initial_arrays(s)
    weights_count = sum(int(v.size) for v in init.values())
    assert all(c["up_wire"] > 8 * weights_count for c in clients)  # masked, not a plain update

    # The oracle: each client's round replayed in this process (the server sent the whole
    # initial model; FULL clients report every group).
    report = P.assignments(s.method, [0], 1, s.seed, full_rounds=s.full_rounds)[0]
    threads = torch.get_num_threads()
    try:
        replay = [
            client_round(s, client_data(s, i, n, "digits"), 1, init, report, None, threads=1)
            for i in range(n)
        ]
    finally:
        torch.set_num_threads(threads)
    for c, (_, _, metrics) in zip(clients, replay, strict=True):
        assert c["loss"] == metrics["loss"], "the replay is not the client's round"
        assert c["num_examples"] == metrics["num-examples"] and c["steps"] == 2
    updates = [u for u, _, _ in replay]
    weights = [m["num-examples"] for _, _, m in replay]

    meta = read_meta(saved.parent)
    assert meta["round"] == 1
    model = {k: v.numpy() for k, v in load_tensors(saved.parent, "model", meta).items()}
    assert set(model) == set(updates[0]) == set(init)
    # How far (in bounds) the model, and each wrong answer, is from the plain mean, per key: the
    # check rejects the initial model and any one client's update, so passing it means the mean.
    names = ["model", "initial", *(f"client {i}" for i in range(n))]
    apart = dict.fromkeys(names, 0.0)
    for k in sorted(model):
        plain = sum(w * u[k].astype(np.float64) for u, w in zip(updates, weights, strict=True))
        plain = plain / sum(weights)
        spread = max(float(np.abs(u[k] - plain).max()) for u in updates)
        bound = S.error_bound(
            weights, spread, clip=s.secagg_clip, bits=s.secagg_bits, max_weight=s.secagg_max_weight
        )
        bound += 4 * np.finfo(np.float32).eps * float(np.abs(plain).max())  # float32 storage
        for name, value in zip(names, [model[k], init[k], *(u[k] for u in updates)], strict=True):
            apart[name] = max(apart[name], float(np.abs(value - plain).max()) / bound)
    assert apart.pop("model") < 1, "the global model is not the clients' weighted mean"
    assert min(apart.values()) > 1, apart
