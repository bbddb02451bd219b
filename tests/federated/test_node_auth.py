"""SuperNode authentication on loopback, with TLS (Flower 1.41): a registered SuperNode trains, an
unregistered one is refused.

``decentdiff fed superlink --node-auth`` starts ``flower-superlink --enable-supernode-auth``;
``flwr supernode register KEY.pub`` adds a SuperNode's public key; ``decentdiff fed supernode
--auth-key KEY`` starts ``flower-supernode --auth-supernode-private-key KEY``, which signs its
requests with that key. In 1.41 a SuperNode started with a key never registers itself: one whose
key is not registered is refused with or without the flag. What ``--enable-supernode-auth`` adds is
that a SuperNode without a key can no longer register itself, so the control link below (no flag)
shows such a SuperNode admitted: the assertions on it fail if the flag were not passed through.

Every process started here, and every process Flower spawned under them, is stopped by its PID.
"""

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
pytest.importorskip("cryptography")

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.supercore.exit import ExitCode

from .test_deployment import APP_TOML, _free_port, _stop, flower_env, make_certificates

BIN = Path(sys.executable).parent
FED = [sys.executable, "-c", "from decentdiff.cli.fed import fed_app; fed_app()"]
# Logged as "Exit Code: 305" ("Failed to initialize the connection"); the process exits with 1.
REFUSED = f"Exit Code: {int(ExitCode.SUPERNODE_CONNECTION_ERROR)}"


def make_node_keys(d: Path, name: str) -> tuple[Path, Path]:
    """What ``ssh-keygen -t ecdsa -b 384 -N "" -f NAME`` writes: an OpenSSH EC private key and
    its ``NAME.pub`` (Flower accepts NIST curves)."""
    key = ec.generate_private_key(ec.SECP384R1())
    private = d / name
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    public = d / f"{name}.pub"
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
    )
    return private, public


def _wait_port(port: int, procs: list[subprocess.Popen], deadline: float) -> None:
    """The SuperLink's HTTP port opens once its start-up is complete."""
    while time.time() < deadline:
        assert all(p.poll() is None for p in procs), "a SuperLink died; see its log"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.25)
    raise AssertionError(f"no SuperLink on port {port}")


def _orphans(pids: set[int]) -> list[int]:
    """Flower's helpers left behind by a process that exited (a refused SuperNode): they carry
    ``--parent-pid PID`` and stop on their own a few seconds later; stopped here instead."""
    found = []
    for d in Path("/proc").iterdir():
        try:
            argv = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        for i, a in enumerate(argv[:-1]):
            if a == b"--parent-pid" and argv[i + 1].isdigit() and int(argv[i + 1]) in pids:
                found.append(int(d.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return ") Z " not in Path(f"/proc/{pid}/stat").read_text()  # a zombie is already dead
    except OSError:
        return False


def _stop_orphans(pids: set[int]) -> None:
    orphans = _orphans(pids)
    for pid in orphans:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.time() + 10
    while time.time() < deadline and any(map(_alive, orphans)):
        time.sleep(0.1)
    for pid in filter(_alive, orphans):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _flwr(env: dict, *args: str) -> dict:
    res = subprocess.run(
        [str(BIN / "flwr"), *args, "--format", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    return json.loads(res.stdout[res.stdout.index("{") :])


def _nodes(env: dict, link: str) -> dict[int, str]:
    """node id -> status ("registered", "online", ...) as the SuperLink lists them."""
    return {int(n["node-id"]): n["status"] for n in _flwr(env, "supernode", "ls", link)["nodes"]}


@pytest.mark.slow
def test_registered_supernode_trains_unregistered_ones_are_refused(tmp_path):
    ca, cert, key = make_certificates(tmp_path)
    good_key, good_pub = make_node_keys(tmp_path, "registered")
    bad_key, _ = make_node_keys(tmp_path, "unregistered")  # its .pub is never registered
    auth_port, open_port = _free_port(), _free_port()
    run = tmp_path / "run"
    app = tmp_path / "app"
    app.mkdir()
    (app / "pyproject.toml").write_text(
        APP_TOML.format(run=run).replace("clients = 2", "clients = 1")
    )
    home = tmp_path / "flwr-home"
    home.mkdir()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "auth"\n\n'
        f'[superlink.auth]\naddress = "127.0.0.1:{auth_port}"\nroot-certificates = "{ca}"\n\n'
        f'[superlink.open]\naddress = "127.0.0.1:{open_port}"\nroot-certificates = "{ca}"\n'
    )
    env = flower_env(home)
    tls = ["--ssl-certfile", str(cert), "--ssl-keyfile", str(key), "--ssl-ca-certfile", str(ca)]
    logs: dict[str, Path] = {}
    procs: dict[str, subprocess.Popen] = {}

    def start(name: str, args: list[str]) -> subprocess.Popen:
        logs[name] = tmp_path / f"{name}.log"
        with logs[name].open("w") as f:
            procs[name] = subprocess.Popen(
                [*FED, *args], env=env, stdout=f, stderr=subprocess.STDOUT
            )
        return procs[name]

    def supernode(name: str, port: int, *extra: str) -> subprocess.Popen:
        return start(
            name,
            [
                "supernode",
                "--superlink",
                f"127.0.0.1:{port}",
                "--root-certificates",
                str(ca),
                "--data",
                "digits",
                "--out",
                str(tmp_path / f"silo-{name}"),
                "--port",
                str(_free_port()),
                "--threads",
                "1",
                *extra,
            ],
        )

    def log(name: str) -> str:
        return logs[name].read_text()

    try:
        superlink = ["superlink", "--host", "127.0.0.1", *tls]
        start("link-auth", [*superlink, "--port", str(auth_port), "--node-auth"])
        start("link-open", [*superlink, "--port", str(open_port)])  # the control: no --node-auth
        links = [procs["link-auth"], procs["link-open"]]
        deadline = time.time() + 120  # generous: only a hung machine reaches it
        _wait_port(auth_port, links, deadline)

        # The SuperLink's operator registers the good SuperNode's public key.
        good_id = int(_flwr(env, "supernode", "register", str(good_pub), "auth")["node-id"])
        assert _nodes(env, "auth") == {good_id: "registered"}

        supernode("good", auth_port, "--auth-key", str(good_key))
        supernode("bad", auth_port, "--auth-key", str(bad_key))
        supernode("keyless", auth_port)  # tries to register itself: refused with --node-auth
        _wait_port(open_port, links, deadline)
        supernode("keyless-open", open_port)  # the control: registers itself without the flag

        # One round of decentdiff's federated app; the ServerApp waits for its one SuperNode.
        res = subprocess.run(
            [str(BIN / "flwr"), "run", str(app), "auth"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert res.returncode == 0 and "Successfully started run" in res.stdout, (
            res.stdout + res.stderr
        )

        rows_path = run / "federated" / "rounds.jsonl"
        while not rows_path.is_file() or "SuperNode ID" not in log("keyless-open"):
            assert time.time() < deadline, {n: log(n)[-2000:] for n in logs}
            for name in ("link-auth", "link-open", "good", "keyless-open"):
                assert procs[name].poll() is None, f"{name} died:\n{log(name)}"
            time.sleep(0.5)

        # The refused ones exit with Flower's connection error, each for its reason.
        for name in ("bad", "keyless"):
            p = procs[name]
            try:
                p.wait(timeout=15)  # refused within seconds of starting, long before this
            except subprocess.TimeoutExpired:
                raise AssertionError(f"SuperNode {name} was not refused:\n{log(name)}") from None
            assert p.returncode != 0 and REFUSED in log(name), log(name)
        assert "Failed to activate SuperNode" in log("bad")  # its key is not registered
        assert "All SuperNodes must be registered via the CLI" in log("keyless")

        # The registered SuperNode is the one that trained; nothing else got onto the SuperLink.
        rows = [json.loads(r) for r in rows_path.read_text().splitlines()]
        assert len(rows) == 1 and rows[0]["complete"] and rows[0]["accepted"] == 1
        assert [c["node"] for c in rows[0]["clients"]] == [good_id]
        meta = tmp_path / "silo-good" / "meta.json"  # its personal model, kept on its side
        while not meta.is_file():
            assert time.time() < deadline, log("good")[-2000:]
            time.sleep(0.25)
        assert json.loads(meta.read_text())["kind"] == "generative"
        assert _nodes(env, "auth") == {good_id: "online"}
        # The control: without --node-auth the keyless SuperNode is admitted.
        assert list(_nodes(env, "open").values()) == ["online"]
    finally:
        _stop(list(procs.values()))
        _stop_orphans({p.pid for p in procs.values()})
    assert all(p.poll() is not None for p in procs.values())


def test_auth_flags_reach_flower(capsys, tmp_path):
    """The pass-through, fast: the flag names are Flower 1.41's (``--help`` of both executables),
    and node authentication without TLS fails in one line."""
    from tests._cli import _bad, cli

    ca, cert, key = make_certificates(tmp_path)
    node_key, _ = make_node_keys(tmp_path, "node")
    tls = ["--ssl-certfile", cert, "--ssl-keyfile", key, "--ssl-ca-certfile", ca]
    code, out, err = cli(capsys, "fed", "superlink", *tls, "--node-auth", "--dry-run")
    assert code == 0 and "flower-superlink" in out and "--enable-supernode-auth" in out, err
    node = ["fed", "supernode", "--superlink", "h:1", "--data", "digits", "--out", tmp_path / "o"]
    code, out, err = cli(
        capsys, *node, "--root-certificates", ca, "--auth-key", node_key, "--dry-run"
    )
    assert code == 0 and f"--auth-supernode-private-key {node_key}" in out, err
    helps = {
        exe: subprocess.run([str(BIN / exe), "--help"], capture_output=True, text=True).stdout
        for exe in ("flower-superlink", "flower-supernode")
    }
    assert "--enable-supernode-auth" in helps["flower-superlink"]
    assert "--auth-supernode-private-key" in helps["flower-supernode"]
    _bad(capsys, None, "fed", "superlink", "--insecure", "--node-auth", match="--node-auth")
    _bad(capsys, None, *node, "--insecure", "--auth-key", node_key, match="--auth-key")
    _bad(
        capsys,
        None,
        *node,
        "--root-certificates",
        ca,
        "--auth-key",
        tmp_path / "x",
        match="not found",
    )
