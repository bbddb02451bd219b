"""The whole DDM pipeline in one call, as ``decentdiff demo`` runs it: partition, K experts,
router, FLOP-matched monolith, compare (the default routings), routing diagnostics, report.

Every stage resumes, so an interrupted demo finishes when called again; RUN/demo.json records how
long each stage of this call took.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .config import resolve
from .run import Run


def run_demo(
    run: Run,
    *,
    parts: int = 4,
    data: str = "mnist5k",
    steps: int = 350,
    batch: int = 128,
    router_steps: int = 400,
    preset: str = "compact",
    class_cond: bool = True,
    guidance: float | None = None,
    n: int = 250,
    sample_steps: int = 20,
    solver: str | None = None,
    seed: int | None = None,
    precision: str | None = None,
    config: Path | None = None,
    sets: list[str] | None = None,
    device: str = "auto",
    progress: bool = True,
    echo: Callable[[str], Any] = print,
) -> dict[str, Any]:
    """Run (or finish) the demo in RUN; ``echo`` receives each stage's one-line summaries.

    Args:
        steps: training steps of each expert (and of the FLOP-matched monolith).
        batch: the monolith's batch B; each expert trains at B/K.
        n: images sampled per evaluated model; ``sample_steps`` solver steps each.
        solver: sample.solver (None: the config's, auto).
        seed: the partition's, train.seed and sample.seed (None: the config's, 0).
        precision: train.precision and sample.precision (None: the config's, auto).
        sets: ``section.key=value`` overrides on top of the demo's own.
        device: auto, cpu, cuda or mps (sampling for compare and diagnose).
    Returns:
        The record written to RUN/demo.json (wall time, seconds per stage).
    """
    from .ddm.cluster import partition_run
    from .ddm.defaults import DEFAULT_ROUTINGS
    from .ddm.diagnostics import diagnose, summary_lines
    from .ddm.experts import expert_summary
    from .ddm.launchers import train_experts
    from .ddm.load import resolve_routing
    from .ddm.monolith import flop_match, train_monolith
    from .ddm.monolith import summary as monolith_summary
    from .ddm.router import router_summary, train_router
    from .ddm.routing import split_routings
    from .ddm.store import partition_path
    from .evaluation.evaluate import read_rows
    from .report import _summary, compare, comparison_table, write_report
    from .training.checkpoint import atomic_write_text
    from .training.loop import resolve_device

    device = resolve_device(device)
    t0 = time.perf_counter()
    sets = [
        f"train.batch={batch}",
        f"model.preset={preset}",
        f"model.class_cond={str(class_cond).lower()}",
        f"sample.steps={sample_steps}",
        # guidance None: the RUN's class-conditional default (config.class_cond_guidance)
        *([f"sample.guidance={guidance}"] if guidance is not None else []),
        *(sets or []),
    ]
    # The options given beat --set (the config precedence of every command).
    if solver is not None:
        sets.append(f"sample.solver={solver}")
    if seed is not None:
        sets += [f"train.seed={seed}", f"sample.seed={seed}"]
    if precision is not None:
        sets += [f"train.precision={precision}", f"sample.precision={precision}"]
    stages: dict[str, float] = {}

    def cfg(**overrides: Any):
        # Re-read per stage: the partition stage writes run.toml, which later stages build on.
        return resolve(config, sets, base=run.base_config(), **overrides)

    def timed(name: str, fn: Callable[[], None]) -> None:
        t = time.perf_counter()
        fn()
        stages[name] = stages.get(name, 0.0) + time.perf_counter() - t

    def do_partition() -> None:
        p = partition_run(run, cfg(data=data), parts, seed=0 if seed is None else seed)
        echo(p.summary())
        echo(f"-> {p.path}, {p.figure}")

    def do_experts() -> None:
        metas = train_experts(run, cfg(preset=preset, steps=steps), progress=progress)
        for k, meta in metas.items():
            echo(expert_summary(k, meta))

    def do_router() -> None:
        c = cfg(preset=preset, steps=router_steps, batch=batch)
        echo(router_summary(run, train_router(run, c, progress=progress)))

    def do_monolith() -> None:
        c = cfg(preset=preset)
        k = flop_match(run, c)
        echo(f"flop-matched to {k} experts: batch {c.train.batch}, {c.train.steps} steps")
        echo(monolith_summary(run, c, train_monolith(run, c, progress=progress)))

    def do_compare() -> None:
        c = cfg(n=n)
        routings = split_routings(",".join(DEFAULT_ROUTINGS))
        names = tuple(dict.fromkeys(resolve_routing(run, x) for x in routings))
        rows = compare(run, c, routings=names, device=device, progress=progress)
        echo(comparison_table(rows))
        echo(f"-> {run.path / 'compare.md'}, {run.path / 'figures' / 'fid_vs_flops.png'}")

    def do_diagnose() -> None:
        out = diagnose(run, cfg(), routings=("top1",), n=128, device=device)
        for line in summary_lines(out):
            echo(line)
        echo(
            f"-> {run.path / 'diagnostics.json'}, {run.path / 'figures' / 'routing_diagnostics.png'}"
        )

    def do_report() -> None:
        echo(f"report -> {write_report(run, cfg())}")

    if not partition_path(run).is_file():
        timed("partition", do_partition)
    timed("experts", do_experts)
    timed("router", do_router)
    timed("monolith", do_monolith)
    timed("compare", do_compare)
    timed("diagnose", do_diagnose)
    timed("report", do_report)
    wall = time.perf_counter() - t0
    # The timing of this call (a resumed demo times only what it still had to do).
    record = {"wall_s": wall, "stages_s": stages, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    atomic_write_text(run.path / "demo.json", json.dumps(record, indent=2) + "\n")
    echo(f"\ndemo done in {wall:.0f} s; report: {run.path / 'report.md'}")
    for line in _summary(run, read_rows(run)):
        echo(f"  {line}")
    return record
