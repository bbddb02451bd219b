"""Shared plumbing of the reproduction study: run decentdiff commands, skip finished work, log.

Every study drives the public command line (``python -m decentdiff ...``), the same commands a user
types, so the study also tests the tool. Work is resumable at three levels: training commands
resume from their checkpoints (and return at once when finished), an evaluation is skipped when
RUN/metrics.jsonl already holds its row, and a study's results file is rewritten at the end.

Environment:
    DECENTDIFF_REPRO         where the runs go (default ``runs/repro``; never committed).
    DECENTDIFF_REPRO_SCALE   multiplies every step count and image count (default 1; a tiny
                             scale checks the plumbing, not the results).
    DECENTDIFF_REPRO_SEEDS   how many seeds the multi-seed studies use (default 3).
    DECENTDIFF_REPRO_RESULTS where the results JSON go (default docs/reproduction).
"""

from __future__ import annotations

import json
import math
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
ROOT = Path(os.environ.get("DECENTDIFF_REPRO", REPO / "runs" / "repro"))
#: Small JSON results, committed with the doc (``DECENTDIFF_REPRO_RESULTS`` elsewhere: smoke runs).
RESULTS = Path(os.environ.get("DECENTDIFF_REPRO_RESULTS", REPO / "docs" / "reproduction"))
SCALE = float(os.environ.get("DECENTDIFF_REPRO_SCALE", "1"))


def scaled(x: int, minimum: int = 1) -> int:
    """An integer budget times DECENTDIFF_REPRO_SCALE (at least ``minimum``)."""
    return max(minimum, round(x * SCALE))


#: The budget every DDM study shares (sized for 2 CPU cores; see docs/reproduction.md).
DDM = {
    "data": "mnist5k",
    "preset": "compact",
    "batch": 64,  # the monolith's batch B; each of K experts uses B/K
    "steps": scaled(300, 2),
    "router_steps": scaled(300, 2),
    "n": scaled(500, 20),  # generated images per evaluation (vs the 1000 held-out images)
    "sample_steps": 20,
}
SEEDS = tuple(range(int(os.environ.get("DECENTDIFF_REPRO_SEEDS", "3"))))

#: Federated budget: 5 clients x 10 rounds x 20 local steps at batch 64 = 1000 client steps,
#: 64k images (3.3x a DDM run's). At 5 rounds x 6 local steps (stop 12) FedAvg's global model
#: scored FID 245-499 against 19.7 centralised: too few sequential steps to compare methods.
#: Study 8 runs its own federation at a DDM run's images (so FLOPs), and one more DDM run at
#: this budget's images.
FED = {
    "data": "mnist5k",
    "preset": "compact",
    "clients": 5,
    "rounds": scaled(10, 1),
    "local_steps": scaled(20, 1),
    "batch": 64,
    "lr": 1e-3,  # the paper's 1e-4 learns next to nothing in this few steps; same for every arm
    # Flow matching, as the DDM studies (the paper: DDPM epsilon with a Huber loss). A centralised
    # DDPM run of this budget's images scores FID 157 by the ODE sampler every study uses (flow
    # matching: 6.7), 30 by the ancestral sampler (docs/reproduction.md, study 6).
    "objective": "fm",
    "n": scaled(200, 20),
    "sample_steps": 20,
}


def fed_run(
    run: Path,
    *,
    method: str,
    split: str,
    study: str,
    seed: int = 0,
    extra: tuple[Any, ...] = (),
    local_steps: int | None = None,
) -> dict[str, Any]:
    """A federation with the FED budget, then its evaluation; returns the fed_eval row + bytes."""
    f = FED
    cli(
        "fed",
        "run",
        run,
        "--data",
        f["data"],
        "--clients",
        f["clients"],
        "--split",
        split,
        "--method",
        method,
        "--rounds",
        f["rounds"],
        "--local-steps",
        local_steps or f["local_steps"],
        "--preset",
        f["preset"],
        "--batch",
        f["batch"],
        "--seed",
        seed,
        "--eval-n",
        0,
        "--objective",
        f["objective"],
        "--set",
        f"train.lr={f['lr']}",
        "--quiet",
        *extra,
        study=study,
    )
    row = find_row(run, kind="fed_eval", n=f["n"])
    if row is None:
        cli(
            "fed",
            "eval",
            run,
            "--n",
            f["n"],
            "--sample-steps",
            f["sample_steps"],
            "--seed",
            seed,
            "--quiet",
            study=study,
        )
        row = find_row(run, kind="fed_eval", n=f["n"])
    rounds = [
        json.loads(x)
        for x in (run / "federated" / "rounds.jsonl").read_text().splitlines()
        if x.strip()
    ]
    sizes = [c.get("num_examples") for c in rounds[0]["clients"]] if rounds else []
    return {
        "fid": row["fid"],
        "precision": row.get("precision"),
        "recall": row.get("recall"),
        "per_model": row.get("per_model"),
        "floor_fid": row.get("floor_fid"),
        "bytes_total": sum(r["total"] for r in rounds),
        "bytes_up": sum(r["up"] for r in rounds),
        "bytes_down": sum(r["down"] for r in rounds),
        "rounds": len(rounds),
        "client_sizes": sizes,
        "seconds": sum(r.get("seconds", 0.0) for r in rounds),
    }


def log_path() -> Path:
    return ROOT / "commands.jsonl"


def cli(*args: Any, study: str) -> float:
    """Run ``decentdiff ARGS`` (quiet), fail loudly, log the command and its wall time."""
    argv = [str(a) for a in args]
    cmd = [sys.executable, "-m", "decentdiff", *argv]
    ROOT.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    print("$ decentdiff " + " ".join(shlex.quote(a) for a in argv), flush=True)
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if res.returncode != 0:
        sys.stderr.write(res.stdout[-2000:] + res.stderr[-4000:])
        raise SystemExit(f"study {study}: `decentdiff {' '.join(argv)}` failed ({res.returncode})")
    out = res.stdout.strip().splitlines()
    if out:
        print("  " + out[-1], flush=True)
    with log_path().open("a") as f:
        row = {"study": study, "cmd": "decentdiff " + " ".join(shlex.quote(a) for a in argv)}
        row.update(wall_s=round(wall, 2), time=time.strftime("%Y-%m-%dT%H:%M:%S"))
        f.write(json.dumps(row) + "\n")
    return wall


def rows(run: Path, kind: str = "eval") -> list[dict[str, Any]]:
    """The rows of RUN/metrics.jsonl of one kind."""
    p = run / "metrics.jsonl"
    if not p.is_file():
        return []
    out = []
    for line in p.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            if r.get("kind") == kind:
                out.append(r)
    return out


def find_row(run: Path, kind: str = "eval", **match: Any) -> dict[str, Any] | None:
    """The last row of ``kind`` whose fields equal ``match``."""
    return find_row_in(rows(run, kind), **match)


def find_row_in(candidates: list[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    """The last of ``candidates`` whose fields equal ``match``."""
    found = None
    for r in candidates:
        if all(r.get(k) == v for k, v in match.items()):
            found = r
    return found


def evaluate(
    run: Path,
    model: str,
    *,
    study: str,
    routing: str | None = None,
    n: int,
    seed: int = 0,
    steps: int = 20,
    solver: str = "euler",
    guidance: float | None = None,
) -> dict[str, Any]:
    """The eval row of (model, routing, n, seed, steps, solver, guidance), computed only if not
    there yet (guidance None: the model's default, resolved as ``eval`` resolves it)."""
    from decentdiff.loading import resolve_guidance
    from decentdiff.run import Run

    want: dict[str, Any] = {"model": model, "n": n, "seed": seed, "steps": steps, "solver": solver}
    if model == "ensemble":
        want["routing"] = routing or "top1"
    g = resolve_guidance(Run(run), model, guidance)

    def find() -> dict[str, Any] | None:  # a row without the field was sampled unguided
        found = [r for r in rows(run) if r.get("guidance", 1.0) == g]
        return find_row_in(found, **want)

    row = find()
    if row is None:
        args: list[Any] = ["eval", run, "--model", model, "--n", n, "--seed", seed]
        args += ["--sample-steps", steps, "--quiet"]
        args += ["--solver", solver]  # explicit: the default is auto
        if model == "ensemble":
            args += ["--routing", want["routing"]]
        if guidance is not None:
            args += ["--set", f"sample.guidance={guidance}"]
        cli(*args, study=study)
        row = find()
        if row is None:
            raise SystemExit(f"study {study}: eval of {model} {routing} wrote no row in {run}")
    return row


def ddm_run(
    run: Path,
    *,
    K: int,
    study: str,
    seed: int = 0,
    by: str = "kmeans",
    monolith: bool = True,
    objective: str | None = None,
    steps: int | None = None,
    budget: dict[str, Any] | None = None,
    class_cond: bool = False,
) -> Path:
    """Partition + K experts + router (+ the FLOP-matched monolith) with the DDM budget.

    ``steps`` overrides the budget's steps (each expert: ``steps`` at batch B/K); ``budget``
    replaces DDM (keys data, preset, batch, steps, router_steps, optional router_preset).
    """
    b = budget or DDM
    if not (run / "partition.npz").is_file():
        sets = [f"model.preset={b['preset']}"]  # recorded in run.toml: every command uses it
        if class_cond:
            sets.append("model.class_cond=true")
        cli(
            "partition", run, "-K", K, "--data", b["data"], "--by", by, "--seed", seed,
            *[a for s in sets for a in ("--set", s)],
            study=study,
        )  # fmt: skip
    extra = ["--objective", objective] if objective else []
    cli(
        "train",
        "experts",
        run,
        "--preset",
        b["preset"],
        "--steps",
        steps or b["steps"],
        "--seed",
        seed,
        "--batch",
        b["batch"] // K,
        "--quiet",
        *extra,
        study=study,
    )
    cli(
        "train",
        "router",
        run,
        "--preset",
        b.get("router_preset", b["preset"]),
        "--steps",
        b["router_steps"],
        "--batch",
        b["batch"],
        "--seed",
        seed,
        "--quiet",
        study=study,
    )
    if monolith:
        cli(
            "train",
            "monolith",
            run,
            "--preset",
            b["preset"],
            "--flop-match",
            "--seed",
            seed,
            "--quiet",
            study=study,
        )
    return run


INCONCLUSIVE = "inconclusive"


def overall(checks: dict[str, str]) -> str:
    """One verdict from several: the common one if all agree, else mixed (inconclusive ignored)."""
    v = {x for x in checks.values() if x != INCONCLUSIVE}
    if not v:
        return INCONCLUSIVE
    return v.pop() if len(v) == 1 else "mixed"


def summarise(values: list[float]) -> dict[str, float]:
    """mean, sample std (0 for one value), min, max, count."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "min": min(values), "max": max(values), "count": n}


def pick(row: dict[str, Any]) -> dict[str, Any]:
    """The figures of an eval row a study keeps."""
    keys = (
        "fid",
        "kid_mean",
        "precision",
        "recall",
        "confident_share",
        "train_flops",
        "sample_gflops_per_image",
        "router_share",
        "n",
        "seed",
    )
    out = {k: row.get(k) for k in keys}
    out["floor_fid"] = (row.get("floor") or {}).get("fid")
    return out


def study_wall(study: str) -> float:
    """Seconds of commands logged for ``study`` (all sessions: a resumed study adds up)."""
    p = log_path()
    if not p.is_file():
        return 0.0
    total = 0.0
    for line in p.read_text().splitlines():
        r = json.loads(line)
        if r.get("study") == study:
            total += float(r.get("wall_s", 0.0))
    return total


def commands(study: str) -> list[str]:
    """The distinct commands logged for ``study``, in first-run order."""
    p = log_path()
    seen: dict[str, None] = {}
    if p.is_file():
        for line in p.read_text().splitlines():
            r = json.loads(line)
            if r.get("study") == study:
                seen.setdefault(r["cmd"], None)
    return list(seen)


def previous(study: str) -> dict[str, Any] | None:
    """The study's last saved result (docs/reproduction/<study>.json), or None."""
    p = RESULTS / f"{study}.json"
    return json.loads(p.read_text()) if p.is_file() else None


def save(study: str, result: dict[str, Any]) -> Path:
    """Write docs/reproduction/<study>.json (the study's numbers, verdict and set-up)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{study}.json"
    wall, cmds = study_wall(study), commands(study)
    # What ran on other machines (a fresh clone has none of their log): kept apart as "inherited"
    # and recomputed on every save, so nothing is counted twice or dropped.
    inherited: dict[str, Any] = {"wall_s": 0.0, "commands": []}
    before = previous(study)
    if before:
        inherited = before.get("inherited", inherited)
        own = [c for c in before.get("commands", []) if c not in inherited["commands"]]
        if not set(own) <= set(cmds):  # the last save's own commands are not in this log
            inherited = {
                "wall_s": float(before.get("wall_s", 0.0)),
                "commands": list(before.get("commands", [])),
            }
    result = {
        **result,
        "study": study,
        "scale": SCALE,
        "wall_s": round(inherited["wall_s"] + wall, 1),
        "commands": [*inherited["commands"], *(c for c in cmds if c not in inherited["commands"])],
        "inherited": inherited,
        "recorded": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp, out)
    print(f"{study}: {result.get('verdict')} -> {out}", flush=True)
    return out


# ------------------------------------------------------------------ shared by the multi-worker studies
def claim(path: Path) -> bool:
    """Claim a job for this worker by creating ``path`` (False: another worker has it). A stale
    claim after a crash: delete the file and restart the worker."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


def worker_arg(argv: list[str]) -> tuple[int, int] | None:
    """``--worker I/N`` of a study's command line (None: one process does every job)."""
    if "--worker" not in argv:
        return None
    i, n = argv[argv.index("--worker") + 1].split("/")
    return int(i), int(n)


def run_phases(argv: list[str] | None, work, report) -> None:
    """A two-phase study's command line: ``run [--worker I/N]``, ``report``, or both (no argument)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    phase = argv[0] if argv and not argv[0].startswith("-") else "all"
    if phase in ("run", "all"):
        work(worker_arg(argv))
    if phase in ("report", "all"):
        print(json.dumps(report()["checks"]))


def t95(n: int) -> float:
    """Two-sided 95% Student-t quantile for n values (n − 1 degrees of freedom), n ≤ 5."""
    return {2: 12.71, 3: 4.30, 4: 3.18, 5: 2.78}.get(n, 1.96)


def t_interval(xs: list[float]) -> list[float]:
    """95% t-interval of the mean of ``xs`` (a single value: that value twice)."""
    if len(xs) < 2:
        return [xs[0], xs[0]]
    s = summarise(xs)
    half = t95(len(xs)) * s["std"] / math.sqrt(len(xs))
    return [s["mean"] - half, s["mean"] + half]


def copy_run(src: Path, dst: Path, *, skip_experts: tuple[int, ...] = ()) -> Path:
    """A RUN holding ``src``'s partition, experts (but ``skip_experts``), router and cached real
    features, for a study that adds models without touching ``src``. Idempotent."""
    import shutil

    if not (dst / "run.toml").is_file():
        dst.mkdir(parents=True, exist_ok=True)
        for name in ("partition.npz", "run.toml"):
            shutil.copy2(src / name, dst / name)
        (dst / "experts").mkdir(exist_ok=True)
        for e in sorted((src / "experts").iterdir()):
            if e.is_dir() and e.name not in {str(k) for k in skip_experts}:
                shutil.copytree(e, dst / "experts" / e.name, dirs_exist_ok=True)
        shutil.copytree(src / "router", dst / "router", dirs_exist_ok=True)
        (dst / "eval").mkdir(exist_ok=True)
        for f in (src / "eval").glob("real-*.npz"):
            shutil.copy2(f, dst / "eval" / f.name)
    return dst
