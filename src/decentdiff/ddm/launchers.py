"""Across islands: train the K experts of a RUN one after another, as parallel local processes, or
as Ray tasks (PAPERS.md §1: experts never communicate, so any scheduler will do).

Every launcher runs the same unit of work — ``decentdiff train expert RUN --expert k`` — which
resumes from ``RUN/experts/<k>/`` by default and writes nothing else. A killed island is therefore
finished by simply launching again; the other experts' files are not touched.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import Config, dump_toml
from ..errors import ConfigError, TrainingError
from ..run import Run
from .store import load_partition


def _config_file(run: Run, cfg: Config) -> Path:
    """Write the resolved config where every island can read it (CLI overrides travel this way)."""
    from dataclasses import asdict

    path = run.path / ".launch" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    content = {k: asdict(getattr(cfg, k)) for k in ("data", "model", "objective", "train")}
    path.write_text(dump_toml(content))
    return path


def expert_command(
    run: Run,
    k: int,
    config: Path,
    *,
    batch: int | None,
    fresh: bool,
    threads: int,
    init: str = "random",
) -> list[str]:
    """The command line of one island (a plain ``decentdiff train expert``)."""
    cmd = [sys.executable, "-m", "decentdiff", "train", "expert", str(run.path), "--expert", str(k)]
    cmd += ["--config", str(config), "--set", f"train.threads={threads}", "-q"]
    if batch is not None:
        cmd += ["--batch", str(batch)]
    if init != "random":
        cmd += ["--init", init]
    if fresh:
        cmd.append("--fresh")
    return cmd


def _env() -> dict[str, str]:
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[2])  # make the child import this very package
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def train_experts(
    run: Run,
    cfg: Config,
    *,
    launcher: str = "local",
    jobs: int | None = None,
    address: str | None = None,
    experts: Sequence[int] | None = None,
    batch: int | None = None,
    fresh: bool = False,
    progress: bool = True,
    max_retries: int = 2,
    threads: int | None = None,
    init: str = "random",
) -> dict[int, dict[str, Any]]:
    """Train experts ``experts`` (default all K) with the chosen launcher.

    Args:
        launcher: ``local`` (this process, one after another), ``process`` (``jobs`` parallel
            subprocesses, torch threads = cores / jobs each), ``ray`` (one Ray task per expert,
            ``num_cpus`` = cores / jobs each, retried ``max_retries`` times, each retry resuming
            from the expert's checkpoint).
        jobs: parallel islands (default: K, capped at the number of cores).
        address: Ray cluster address (``ray start --head`` prints it); None starts a local Ray.
        threads: torch threads (and Ray CPUs) per island (default: cores // jobs).
        init: ``random``, or ``monolith``: each expert without a checkpoint (or every one, with
            ``fresh``) starts from RUN/monolith's checkpoint at step W (``ddm/warm.py``). Every
            expert's start is checked before any island trains.

    Returns:
        {k: meta.json of expert k}.
    """
    from ..training.checkpoint import read_meta
    from .store import expert_dir
    from .warm import plan_start

    if launcher not in LAUNCHERS:
        raise ConfigError(f"unknown --launcher {launcher!r}; choose one of: {', '.join(LAUNCHERS)}")
    rec = load_partition(run)
    ks = list(range(rec.num_parts)) if experts is None else list(experts)
    cores = os.cpu_count() or 1
    jobs = jobs if jobs is not None else min(len(ks), cores)
    if jobs < 1:
        raise ConfigError(f"--jobs must be ≥ 1, got {jobs}")
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads must be ≥ 1, got {threads}")
    for k in ks:  # a refused start (no monolith, another init, ...) stops all before any trains
        plan_start(run, k, cfg, init, fresh=fresh, fingerprint=rec.fingerprint)
    islands = Islands(
        run=run,
        ks=ks,
        cfg=cfg,
        jobs=jobs,
        threads=threads if threads is not None else max(1, cores // jobs),
        batch=batch,
        fresh=fresh,
        progress=progress,
        address=address,
        max_retries=max_retries,
        init=init,
    )
    LAUNCHERS[launcher](islands)
    return {k: read_meta(expert_dir(run, k)) for k in ks}


@dataclass(frozen=True)
class Islands:
    """The experts to train and how: what every launcher receives."""

    run: Run
    ks: list[int]
    cfg: Config
    jobs: int  # at most this many islands at once (process, ray)
    threads: int  # torch threads (and Ray CPUs) per island
    batch: int | None
    fresh: bool
    progress: bool  # progress bars (local only: other launchers log to RUN/.launch)
    address: str | None  # Ray cluster address (None: a local Ray)
    max_retries: int  # Ray retries per island
    init: str = "random"  # where an expert without a checkpoint starts (ddm/warm.py)


def _launch_local(i: Islands) -> None:
    """This process, one expert after another."""
    from .experts import train_expert

    for k in i.ks:
        train_expert(
            i.run, k, i.cfg, batch=i.batch, fresh=i.fresh, progress=i.progress, init=i.init
        )


def _launch_processes(i: Islands) -> None:
    config = _config_file(i.run, i.cfg)
    _run_processes(
        i.run,
        i.ks,
        config,
        jobs=i.jobs,
        batch=i.batch,
        fresh=i.fresh,
        threads=i.threads,
        init=i.init,
    )


def _launch_ray(i: Islands) -> None:
    config = _config_file(i.run, i.cfg)
    _run_ray(
        i.run, i.ks, config, i.jobs, i.address, i.batch, i.fresh, i.threads, i.max_retries, i.init
    )


def _run_processes(
    run: Run,
    ks: list[int],
    config: Path,
    *,
    jobs: int,
    batch: int | None,
    fresh: bool,
    threads: int,
    on_start: Any = None,
    init: str = "random",
) -> None:
    """At most ``jobs`` islands at once; each island's stderr goes to RUN/.launch/expert-k.log."""
    pending, running, failed = list(ks), {}, []
    env = _env()
    while pending or running:
        while pending and len(running) < jobs:
            k = pending.pop(0)
            log = (run.path / ".launch" / f"expert-{k}.log").open("w")
            cmd = expert_command(
                run, k, config, batch=batch, fresh=fresh, threads=threads, init=init
            )
            running[k] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log)
            if on_start is not None:
                on_start(k, running[k][0])
        for k, (p, log) in list(running.items()):
            if p.poll() is not None:
                log.close()
                del running[k]
                if p.returncode != 0:
                    failed.append((k, p.returncode))
        time.sleep(0.05)
    if failed:
        k, code = failed[0]
        tail = (run.path / ".launch" / f"expert-{k}.log").read_text().strip().splitlines()[-1:]
        raise TrainingError(
            f"expert {k} failed (exit {code}{': ' + tail[0] if tail else ''}); run the same "
            "command again to resume it"
        )


def _run_ray(
    run: Run,
    ks: list[int],
    config: Path,
    jobs: int,
    address: str | None,
    batch: int | None,
    fresh: bool,
    threads: int,
    max_retries: int,
    init: str = "random",
) -> None:
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "--launcher ray needs Ray: pip install 'ray==2.55.1' (it comes with flwr[simulation])"
        ) from None
    env = _env()
    if fresh:
        import shutil

        from .store import expert_dir

        for k in ks:
            shutil.rmtree(expert_dir(run, k), ignore_errors=True)

    def island(k: int) -> int:
        # Never --fresh inside the task: a retry runs the same command and so resumes from the
        # last checkpoint of the failed attempt (--fresh was honoured by clearing the directory).
        cmd = expert_command(run, k, config, batch=batch, fresh=False, threads=threads, init=init)
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"expert {k}: {done.stderr.strip()[-500:]}")
        return k

    started_here = not ray.is_initialized()
    if started_here:
        kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if address is None:
            kw["num_cpus"] = os.cpu_count() or 1
        ray.init(address=address, **kw)
    try:
        task = ray.remote(num_cpus=threads, max_retries=max_retries, retry_exceptions=True)(island)
        refs = [task.remote(k) for k in ks]
        try:
            ray.get(refs)
        except ray.exceptions.RayError as e:
            raise TrainingError(
                f"a Ray island failed after {max_retries} retries: {str(e).splitlines()[-1]}"
            ) from None
    finally:
        if started_here:
            ray.shutdown()


#: ``--launcher`` name -> the function that trains a set of islands with it.
LAUNCHERS: dict[str, Callable[[Islands], None]] = {
    "local": _launch_local,
    "process": _launch_processes,
    "ray": _launch_ray,
}
