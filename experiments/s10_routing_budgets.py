"""Study 10 (issue 14): which routing makes the ensemble beat its FLOP-matched monolith, on 3 seeds
and 3 budgets, K in {2, 4, 8}, unconditional and class-conditional.

The budget is the capacity-limited regime DDM is made for: the `tiny` UNet (87k parameters), trained
long (500, 1,500 and 5,000 steps at batch 64; each of K experts at 64/K), where K experts hold K times
the monolith's parameters at the same FLOPs. Every FID is on 1,000 generated images; ratios to the
monolith carry a bootstrap 95% interval (generated and held-out features resampled together) and a
t-interval over seeds.

Phases (each resumable; run both in order with no argument):
    python experiments/s10_routing_budgets.py train [--worker I/N]
    python experiments/s10_routing_budgets.py eval  [--worker I/N]
    python experiments/s10_routing_budgets.py guided [--worker I/N]   (class-conditional, guidance 2)
    python experiments/s10_routing_budgets.py report
``--worker I/N`` lets N processes share the jobs (a job is claimed by creating its lock file).
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from common import (
    ROOT,
    SEEDS,
    claim,
    cli,
    ddm_run,
    evaluate,
    save,
    scaled,
    summarise,
    t95,
    worker_arg,
)

STUDY = "s10_routing_budgets"
CLAIM = (
    "Issue 14: the best routing at one expert per sample per step has FID <= 0.9x the FLOP-matched "
    "monolith at K=4 and K=8 (unconditional, mean of 3 seeds, every seed below 1.0) at one budget "
    "or more; class-conditional <= 0.8x."
)

BASE: dict[str, Any] = {
    "data": "mnist5k",
    "preset": "tiny",
    "router_preset": "compact",
    "batch": 64,
    "n": scaled(1000, 20),
    "sample_steps": 20,
}
#: steps per budget (monolith at batch 64; each expert the same steps at 64/K)
BUDGETS = {"b500": scaled(500, 2), "b1500": scaled(1500, 2), "b5000": scaled(5000, 2)}
ROUTER_STEPS_MAX = scaled(1500, 2)
#: one-expert-per-step routings compared everywhere, and the extra ones at the middle budget
ROUTINGS = ("mixture", "top1", "schedule:0.5,top1")
EXTRA = ("sticky:0.9", "nucleus:0.9", "topk:2")


def budget(name: str) -> dict[str, Any]:
    steps = BUDGETS[name]
    return {**BASE, "steps": steps, "router_steps": min(steps, ROUTER_STEPS_MAX)}


def jobs() -> list[tuple[str, bool, int, int]]:
    """(budget, class-conditional, seed, K) in priority order."""
    out: list[tuple[str, bool, int, int]] = []
    for b, cc, ks in (
        ("b1500", False, (4, 8, 2)),
        ("b500", False, (4, 8, 2)),
        ("b1500", True, (4, 8)),
        ("b5000", False, (4, 8)),
    ):
        for seed in SEEDS:
            out += [(b, cc, seed, k) for k in ks]
    return out


def run_dir(b: str, cc: bool, seed: int, K: int) -> Path:
    return ROOT / "s10" / f"{b}{'-cc' if cc else ''}" / f"seed{seed}" / f"K{K}"


def trained_k4(seed: int, study: str, b: str = "b5000") -> Path:
    """This study's unconditional K=4 RUN of budget ``b`` (experts, router, monolith), for a later
    study that builds on it; a clear exit if study 10 has not trained it yet."""
    run = run_dir(b, False, seed, 4)
    if not (run / "trained").is_file():
        raise SystemExit(f"study {study}: needs study 10's {run} (run s10_routing_budgets first)")
    return run


def mono_run(b: str, cc: bool, seed: int) -> Path:
    """The monolith of a (budget, seed) lives in the K=4 run (FLOP-matched to its experts)."""
    return run_dir(b, cc, seed, 4)


def _mine(i: int, worker: tuple[int, int] | None) -> bool:
    return worker is None or i % worker[1] == worker[0]


def train(worker: tuple[int, int] | None) -> None:
    for b, cc, seed, K in jobs():
        run = run_dir(b, cc, seed, K)
        if (run / "trained").is_file():
            continue
        # Workers share the queue: the first to create the claim trains it (a stale claim after a
        # crash: delete runs/repro/s10/**/.claim-train and restart).
        if worker is not None and not claim(run / ".claim-train"):
            continue
        ddm_run(run, K=K, seed=seed, study=STUDY, budget=budget(b), class_cond=cc, monolith=False)
        if K == 4:
            cli("train", "monolith", run, "--preset", BASE["preset"], "--flop-match",
                "--seed", seed, "--quiet", study=STUDY)  # fmt: skip
        (run / "trained").write_text("")


def routings_for(b: str, cc: bool) -> tuple[str, ...]:
    return ROUTINGS + (EXTRA if b == "b1500" else ())


#: Class-conditional runs are also sampled with classifier-free guidance (as `make demo`).
GUIDANCE = 2.0
CC_GUIDED = ("top1", "mixture")


def ev(
    run: Path, model: str, seed: int, routing: str | None = None, guidance: float = 1.0
) -> dict[str, Any]:
    # guidance explicit, 1 unless given: the class-conditional RUNs were scored unguided before
    # sample.guidance had a class-conditional default (config.CLASS_COND_GUIDANCE)
    return evaluate(run, model, routing=routing, n=BASE["n"], seed=seed,
                    steps=BASE["sample_steps"], study=STUDY, guidance=guidance)  # fmt: skip


def eval_guided(worker: tuple[int, int] | None) -> None:
    for i, (b, cc, seed, K) in enumerate(jobs()):
        run = run_dir(b, cc, seed, K)
        if not cc or not _mine(i, worker) or not (run / "trained").is_file():
            continue
        if K == 4:
            ev(run, "monolith", seed, guidance=GUIDANCE)
        for r in CC_GUIDED:
            ev(run, "ensemble", seed, r, guidance=GUIDANCE)


def eval_all(worker: tuple[int, int] | None) -> None:
    for i, (b, cc, seed, K) in enumerate(jobs()):
        run = run_dir(b, cc, seed, K)
        if not _mine(i, worker) or not (run / "trained").is_file():
            continue
        if K == 4:
            ev(run, "monolith", seed)
        for r in routings_for(b, cc):
            ev(run, "ensemble", seed, r)


# ------------------------------------------------------------------------------------ results


def _row(
    run: Path, model: str, seed: int, routing: str | None = None, guidance: float = 1.0
) -> dict[str, Any] | None:
    from common import find_row

    want: dict[str, Any] = {"model": model, "n": BASE["n"], "seed": seed}
    want.update(steps=BASE["sample_steps"], solver="euler", guidance=guidance)
    if model == "ensemble":
        want["routing"] = routing
    return find_row(run, **want)


N_BOOT = 200
_BOOT_CACHE: dict[str, list[float]] = {}


def _boot(e_run: Path, e: dict[str, Any], m_run: Path, m: dict[str, Any]) -> list[float] | None:
    """Bootstrap 95% interval of FID(e) / FID(m) from the saved features (None: not saved);
    cached in runs/repro/s10/bootstrap.json (a few seconds each at 128-d features)."""
    from decentdiff.errors import RunError
    from decentdiff.evaluation.evaluate import row_features
    from decentdiff.evaluation.metrics import bootstrap_fid_ratio
    from decentdiff.run import Run

    path = ROOT / "s10" / "bootstrap.json"
    if not _BOOT_CACHE and path.is_file():
        _BOOT_CACHE.update(json.loads(path.read_text()))
    key = f"{e_run}|{e.get('time')}|{e['fid']}|{m_run}|{m.get('time')}|{m['fid']}|{N_BOOT}"
    if key not in _BOOT_CACHE:
        try:
            real, fe = row_features(Run(e_run), e)
            _, fm = row_features(Run(m_run), m)
        except RunError:
            return None
        _BOOT_CACHE[key] = list(bootstrap_fid_ratio(real, fe, fm, n_boot=N_BOOT, seed=0))
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(_BOOT_CACHE))
        os.replace(tmp, path)
    return _BOOT_CACHE[key]


def diagnostics() -> dict[str, Any]:
    """Router calibration and top-1 usage of the middle budget's runs (unconditional, K=4/8)."""
    out: dict[str, Any] = {}
    for cc in (False, True):
        for K in (4, 8):
            for seed in SEEDS:
                run = run_dir("b1500", cc, seed, K)
                if not (run / "trained").is_file():
                    continue
                if not (run / "diagnostics.json").is_file():
                    cli("diagnose", run, "--routing", "top1", "--n", 500, "--sample-steps",
                        BASE["sample_steps"], "--seed", seed, study=STUDY)  # fmt: skip
                d = json.loads((run / "diagnostics.json").read_text())
                u = next((u for u in d["usage"] if u["routing"] == "top1"), None)
                if u is None:  # traced with other routings by hand: trace top1 again
                    (run / "diagnostics.json").unlink()
                    cli("diagnose", run, "--routing", "top1", "--n", 500, "--sample-steps",
                        BASE["sample_steps"], "--seed", seed, study=STUDY)  # fmt: skip
                    d = json.loads((run / "diagnostics.json").read_text())
                    u = d["usage"][0]
                out[f"b1500{'-cc' if cc else ''}/K{K}/seed{seed}"] = {
                    "accuracy": d["calibration"]["accuracy"],
                    "ece": d["calibration"]["ece"],
                    "entropy": d["calibration"]["entropy"],
                    "t": d["calibration"]["t"],
                    "prior_accuracy": d["calibration"]["prior"],
                    "top1_tv_first": u["tv_first"],
                    "top1_tv_final": u["tv_final"],
                    "top1_switches_per_image": u["switches_per_image"],
                    "top1_ever_switch": u["ever_switch"],
                }
    return out


def report() -> dict[str, Any]:
    cells: dict[str, Any] = {}
    for b in BUDGETS:
        for cc, g in ((False, 1.0), (True, 1.0), (True, GUIDANCE)):
            for K in (2, 4, 8):
                for r in ROUTINGS + EXTRA:
                    per_seed = []
                    for seed in SEEDS:
                        m = _row(mono_run(b, cc, seed), "monolith", seed, guidance=g)
                        e = _row(run_dir(b, cc, seed, K), "ensemble", seed, r, guidance=g)
                        if m is None or e is None:
                            continue
                        ratio = e["fid"] / m["fid"]
                        boot = _boot(run_dir(b, cc, seed, K), e, mono_run(b, cc, seed), m)
                        per_seed.append({"seed": seed, "fid": e["fid"], "monolith_fid": m["fid"],
                                         "ratio": ratio, "ratio_ci95": boot,
                                         "precision": e.get("precision"),
                                         "recall": e.get("recall"),
                                         "gflops": e.get("sample_gflops_per_image"),
                                         "train_flops_ratio": e["train_flops"] / m["train_flops"]})  # fmt: skip
                    if not per_seed:
                        continue
                    ratios = [p["ratio"] for p in per_seed]
                    s = summarise(ratios)
                    half = t95(len(ratios)) * s["std"] / math.sqrt(len(ratios))
                    tag = f"{b}{'-cc' if cc else ''}{f'-g{g:g}' if g != 1.0 else ''}"
                    cells[f"{tag}/K{K}/{r}"] = {
                        "budget": b, "steps": BUDGETS[b], "class_cond": cc, "K": K, "routing": r,
                        "guidance": g, "group": tag,
                        "ratio": s, "ratio_t95": [s["mean"] - half, s["mean"] + half],
                        "fid": summarise([p["fid"] for p in per_seed]),
                        "monolith_fid": summarise([p["monolith_fid"] for p in per_seed]),
                        "per_seed": per_seed,
                    }  # fmt: skip
    verdicts = _verdicts(cells)
    result = {
        "diagnostics": diagnostics(),
        "claim": CLAIM,
        "setup": {**BASE, "budgets": BUDGETS, "router_steps_max": ROUTER_STEPS_MAX,
                  "seeds": list(SEEDS), "routings": list(ROUTINGS + EXTRA)},
        "cells": cells,
        **verdicts,
    }  # fmt: skip
    save(STUDY, result)
    return result


ONE_EXPERT = ("mixture", "top1", "sticky:0.9", "schedule:0.5,top1", "nucleus:0.9")


def _verdicts(cells: dict[str, Any]) -> dict[str, Any]:
    """The issue's bar: ratio mean <= 0.9 with every seed < 1 at K=4 and K=8 (unconditional) at some
    budget with one routing of one-expert cost; class-conditional <= 0.8."""
    best: dict[str, Any] = {}
    for c in cells.values():
        if c["routing"] not in ONE_EXPERT or len(c["per_seed"]) < len(SEEDS):
            continue
        group = f"{c['group']}/K{c['K']}"
        if group not in best or c["ratio"]["mean"] < best[group]["ratio"]["mean"]:
            best[group] = {"routing": c["routing"], "ratio": c["ratio"],
                           "every_seed_below_1": all(p["ratio"] < 1 for p in c["per_seed"])}  # fmt: skip
    checks: dict[str, str] = {}
    for b in BUDGETS:
        for tag, bar in ((b, 0.9), (f"{b}-cc", 0.8), (f"{b}-cc-g{GUIDANCE:g}", 0.8)):
            gs = [best.get(f"{tag}/K{K}") for K in (4, 8)]
            if any(g is None for g in gs):
                continue
            ok = all(g["ratio"]["mean"] <= bar and g["every_seed_below_1"] for g in gs)
            checks[tag] = "held" if ok else "not held"
    from common import overall

    # Each kind of model is held when it is held at one budget or more (the bar).
    kinds = {}
    for kind, vs in (("unconditional", [v for k, v in checks.items() if "-cc" not in k]),
                     ("class-conditional", [v for k, v in checks.items() if "-cc" in k])):  # fmt: skip
        if vs:
            kinds[kind] = "held" if "held" in vs else "not held"
    return {"best": best, "checks": checks, "kinds": kinds, "verdict": overall(kinds)}


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    phase = argv[0] if argv and not argv[0].startswith("-") else "all"
    w = worker_arg(argv)
    if phase in ("train", "all"):
        train(w)
    if phase in ("eval", "all"):
        eval_all(w)
    if phase == "eval-wait":  # evaluate as the trainers finish runs, until all are evaluated
        import time

        while True:
            eval_all(w)
            if all((run_dir(*j) / "trained").is_file() for j in jobs()):
                eval_all(w)
                break
            time.sleep(60)
    if phase in ("guided", "all"):
        eval_guided(w)
    if phase in ("report", "all"):
        print(json.dumps(report()["checks"]))


if __name__ == "__main__":
    main()
