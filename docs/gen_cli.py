"""Write docs/cli.md, the command-line reference, from decentdiff's own command tree.

    .venv/bin/python docs/gen_cli.py           # rewrite docs/cli.md
    .venv/bin/python docs/gen_cli.py --check   # exit 1 if docs/cli.md is not what it would write

It walks the click commands that typer builds from ``decentdiff.cli.main.app`` and prints each
command's ``--help`` through click's formatter at a fixed width, so the page does not depend on
the terminal, the environment or colours. ``tests/test_cli_reference.py`` fails when the page is
stale (an option added, a help text changed): run the first command above and commit the page.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import click

DOC = Path(__file__).resolve().parent / "cli.md"
WIDTH = 100  # the help's line width: fixed, whatever the terminal says
REGENERATE = ".venv/bin/python docs/gen_cli.py"


#: The header's table: one name per concept, the same on every command. Old spellings still parse,
#: hidden from --help, and print one line naming the new one (src/decentdiff/cli/options.py).
VOCABULARY = [
    "## One vocabulary",
    "",
    "Each concept has one name, and a name means one thing, on every command:",
    "",
    "| concept | option | commands | old spelling (still accepted, with a note) |",
    "|---|---|---|---|",
    "| training steps | `--steps` | `train *`, `distill`, `experts add`/`remove`, `demo` | |",
    "| solver steps of sampling | `--sample-steps` | every command that samples | `--steps` on "
    "`sample`, `eval`, `compare`, `diagnose`, `fed eval` |",
    "| number of images | `--n` | every command that samples | `--eval-n` (`fed run`) |",
    "| number of federated clients | `--clients` | `fed run`, `fed bytes` | `-n` |",
    "| number of DDM parts (clusters, one expert each) | `--parts`, `-K` | `partition`, `demo` | |",
    "| ensemble routing: one, or several comma-separated where a command compares them | "
    "`--routing` | `sample`, `eval`, `compare`, `diagnose` | `--routings` (`compare`, "
    "`diagnose`) |",
    "| what k-means clusters on | `--features` | `partition` | |",
    "| what FID, KID, precision and recall are computed on | `--eval-features` | `eval`, "
    "`compare`, `fed eval` | `--features` (`eval`, `compare`, `fed eval`) |",
    "| start over (a checkpoint, a partition, reused rows, an output folder) | `--fresh` | "
    "`train *`, `distill`, `partition`, `compare`, `export`, `fed run` | `--force` "
    "(`partition`, `export`), `--recompute` (`compare`) |",
    "| the seed of what the command does | `--seed` | training, sampling, the partition, a "
    "federation; `demo`: every stage | |",
    "",
    "Every command that samples (`sample`, `eval`, `compare`, `diagnose`, `demo`, `fed eval`, "
    "`fed run`) takes `--device`, `--precision`, `--solver`, `--seed` and `--sample-steps`, and "
    "`--guidance` where a class-conditional model can be sampled. How the data is divided keeps "
    "two names, because the two are different choices with different values: `partition --by` "
    "picks a clustering method (`kmeans` on `--features`, or the `random` and `label` controls) "
    "whose parts should differ in content, `fed run --split` a model of how silos differ "
    "(`iid`, `dirichlet:ALPHA`, `quantity:ALPHA`, Flower's partitioners).",
]


def _context(cmd: click.Command, name: str, parent: click.Context | None) -> click.Context:
    return click.Context(
        cmd, info_name=name, parent=parent, terminal_width=WIDTH, max_content_width=WIDTH
    )


def commands() -> Iterator[tuple[click.Context, click.Command]]:
    """Every command and group of ``decentdiff``, depth first, in ``--help``'s order."""
    import typer.main

    from decentdiff.cli.main import app

    root = typer.main.get_command(app)

    def walk(ctx: click.Context, cmd: click.Command):
        yield ctx, cmd
        if isinstance(cmd, click.Group):
            for name in cmd.list_commands(ctx):
                sub = cmd.get_command(ctx, name)
                yield from walk(_context(sub, name, ctx), sub)

    yield from walk(_context(root, "decentdiff", None), root)


def _anchor(path: str) -> str:
    """GitHub's anchor of a heading ``decentdiff fed run`` (in backticks)."""
    return path.lower().replace(" ", "-")


def render() -> str:
    entries = list(commands())
    out = [
        "# Command-line reference",
        "",
        "Generated from the commands themselves by `docs/gen_cli.py`; do not edit by hand. After",
        "changing a command, an option or a help text, regenerate it:",
        "",
        "```bash",
        REGENERATE,
        "```",
        "",
        "(`tests/test_cli_reference.py` fails while this page is stale.) Every command below also",
        "accepts `--debug` (tracebacks instead of one-line errors). What the commands are for, in",
        "order: [getting started](getting-started.md), [DDM](ddm.md), [federated](federated.md),",
        "[evaluation](evaluation.md).",
        "",
        *VOCABULARY,
        "",
        "| command | what it does |",
        "|---|---|",
    ]
    for ctx, cmd in entries[1:]:
        short = cmd.get_short_help_str(limit=1000)
        short = short.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
        out.append(f"| [`{ctx.command_path}`](#{_anchor(ctx.command_path)}) | {short} |")
    for ctx, cmd in entries:
        help_text = cmd.get_help(ctx).rstrip()
        out += ["", f"## `{ctx.command_path}`", "", "```text", help_text, "```"]
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if DOC.is_file() and DOC.read_text() == text:
            return 0
        print(f"{DOC} is stale: regenerate it with `{REGENERATE}`", file=sys.stderr)
        return 1
    DOC.write_text(text)
    print(f"wrote {DOC} ({len(text.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
