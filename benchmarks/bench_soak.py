"""The crash-resume soak (`make soak`): the reliability suite's SIGKILL tests at 20 kill points per
trainer. Reads the summary `make soak` wrote to benchmarks/soak.txt (runs the soak first if there
is none) and quotes pytest's verdict; the tests themselves assert bitwise-identical resumed weights
and a complete checkpoint after every kill.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from common import Benchmark, Context

KILLS = 20


def bench_soak(ctx: Context) -> dict[str, Any]:
    root = Path(ctx.root)
    out = root / "benchmarks" / "soak.txt"
    if not out.is_file():
        env = {**os.environ, "DECENTDIFF_SOAK_KILLS": str(KILLS)}
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
        done = subprocess.run(
            [*cmd, "tests/reliability/test_crash_resume.py"],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
        )
        out.write_text(done.stdout + done.stderr)
    lines = [x for x in out.read_text().splitlines() if x.strip()]
    summary = lines[-1] if lines else "(empty)"
    return {
        "kills_per_trainer": KILLS,
        "summary": summary,
        "passed": "failed" not in summary and "passed" in summary,
    }


def render_soak(r: dict[str, Any]) -> str:
    from common import verdict

    return (
        f"`make soak`: expert, router and distillation training each SIGKILLed at "
        f"{r['kills_per_trainer']} seeded points (before a rename, before an fsync, or at a random "
        "delay mid-step), then resumed; each test asserts the final weights are bitwise those of "
        "an uninterrupted run and that a complete, verifiable checkpoint was on disk after every "
        f"kill. pytest: `{r['summary']}` — all passed: {verdict(r['passed'])}."
    )


BENCHMARKS = [
    Benchmark("soak", "Crash-resume soak", bench_soak, render_soak, default=False),
]
