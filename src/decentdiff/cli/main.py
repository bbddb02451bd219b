"""The ``decentdiff`` command: the command tree, the command log and the one place user errors
become one line and exit status 2 (``--debug`` shows tracebacks).

Each command group lives in its own module of this package and takes its shared options from
:mod:`.options`; no command module imports this one. Heavy imports (torch, ...) happen inside
commands, so ``decentdiff --help`` stays fast.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

import click
import typer
import typer.core

from ..errors import DecentDiffError
from . import data, ddm, demo, evaluate, train
from .fed import fed_app

# Plain click help: typer escapes "[default: …]" for rich even when rich markup is off, which
# prints "\[default: …]"; rich is present only as a dependency of flwr.
typer.core.HAS_RICH = False

#: ``decentdiff --help`` lists the commands in the order of the workflow: the whole pipeline in one
#: command, the data, a DDM run step by step (partition, training, changing members, distilling),
#: using the models (sampling, scoring, comparing, diagnosing, reporting, sharing), then the
#: federated family.
WORKFLOW = (
    "demo",
    "data",
    "partition",
    "train",
    "experts",
    "distill",
    "sample",
    "eval",
    "compare",
    "diagnose",
    "report",
    "export",
    "fed",
)


class WorkflowGroup(typer.core.TyperGroup):
    """The top-level group: commands listed in :data:`WORKFLOW` order (typer lists commands
    before groups, each in the order they were added)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        names = super().list_commands(ctx)
        return sorted(names, key=lambda n: WORKFLOW.index(n) if n in WORKFLOW else len(WORKFLOW))


app = typer.Typer(
    name="decentdiff",
    cls=WorkflowGroup,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
    help=(
        "Train diffusion models without one big cluster: isolated experts mixed by a router "
        "(Decentralized Diffusion Models) or federated averaging across data silos. "
        "Every command reads and writes one run directory (RUN). Add --debug anywhere for tracebacks."
    ),
)
data_app = typer.Typer(no_args_is_help=True, help="List and inspect data sources.")
train_app = typer.Typer(
    no_args_is_help=True, help="Train models into a RUN directory (resumes by default)."
)

# The command tree, in one place.
data_app.command("list")(data.data_list)
data_app.command("show")(data.data_show)
train_app.command("monolith")(train.train_monolith)
train_app.command("expert")(train.train_expert)
train_app.command("experts")(train.train_experts)
train_app.command("router")(train.train_router)
app.add_typer(data_app, name="data")
app.add_typer(train_app, name="train")
app.command("partition")(ddm.partition)
app.command("distill")(train.distill)
app.add_typer(ddm.experts_app, name="experts")
app.command("sample")(evaluate.sample)
app.command("eval")(evaluate.evaluate)
app.command("compare")(evaluate.compare)
app.command("report")(evaluate.report)
app.command("export")(evaluate.export)
app.command("diagnose")(ddm.diagnose)
app.command("demo")(demo.demo)
app.add_typer(fed_app, name="fed")


def _log_target(args: list[str]) -> Path | None:
    """Where a command is logged: RUN/commands.txt, or, for `train expert`, the island's own
    RUN/experts/<k>/commands.txt (no shared file, no race between parallel islands)."""
    import os

    if not args or args[0] in ("data", "--help", "-h") or "--help" in args:
        return None
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 speaks for the island
        return None
    for a in args:
        p = Path(a)
        if (p / "run.toml").is_file():
            if args[:2] != ["train", "expert"]:
                return p / "commands.txt"
            k = next(
                (args[i + 1] for i, x in enumerate(args[:-1]) if x in ("--expert", "-k")), None
            )
            return None if k is None else p / "experts" / k / "commands.txt"
    return None


def _stamp(path: Path | None) -> int | None:
    """mtime of the island's meta.json (a `train expert` that trained nothing is not logged)."""
    if path is None or path.name != "commands.txt" or path.parent.parent.name != "experts":
        return None
    meta = path.parent / "meta.json"
    return meta.stat().st_mtime_ns if meta.is_file() else 0


def _log_command(args: list[str], log: Path | None, stamp: int | None) -> None:
    """Append a successful command to its log (for the report's "Reproduce" section)."""
    import shlex

    if log is None or not log.parent.is_dir():
        return
    if stamp is not None and _stamp(log) == stamp:
        return  # an island relaunched after it finished: nothing happened, nothing to log
    with log.open("a") as f:
        f.write("decentdiff " + " ".join(shlex.quote(x) for x in args) + "\n")


def main(argv: list[str] | None = None) -> None:
    """Entry point: runs the typer app, turning user errors into one line and exit status 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    try:
        log = _log_target(args)
        stamp = _stamp(log)
        app(args=args, prog_name="decentdiff", standalone_mode=False)
        _log_command(args, _log_target(args) if log is None else log, stamp)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.UsageError as e:  # bad option or argument: one line, with where to get help
        cmd = e.ctx.command_path if e.ctx is not None else "decentdiff"
        print(
            f"decentdiff: error: {e.format_message()} (see `{cmd} --help`)",
            file=sys.stderr,
        )
        sys.exit(2)
    except click.ClickException as e:
        print(f"decentdiff: error: {e.format_message()}", file=sys.stderr)
        sys.exit(2 if e.exit_code in (1, 2) else e.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        print("decentdiff: interrupted; run the same command again to resume", file=sys.stderr)
        sys.exit(130)
    except DecentDiffError as e:
        if debug:
            traceback.print_exc()
        print(f"decentdiff: error: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:  # disk full, permission denied, ...: still one line, nothing half-written
        if debug:
            traceback.print_exc()
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        print(
            f"decentdiff: error: {e.strerror or e}{where}; check the path, permissions and free space",
            file=sys.stderr,
        )
        sys.exit(2)
