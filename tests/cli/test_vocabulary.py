"""One command-line vocabulary: each concept one name and one meaning on every command.

- No command has two options that share a flag, and no option is declared twice: every option a
  command module declares inline is one that src/decentdiff/cli/options.py does not define, and
  no command module declares it a second time.
- Every command that samples takes --device, --precision, --solver, --seed, --sample-steps, --n
  and --guidance; which commands sample is found from their code, not only listed.
- Renamed options keep their old spelling as a hidden alias that prints one note and hands its
  value on; old and new spelling given differently is an error. The previous README's command
  lines still parse.
- `decentdiff --help` lists the commands in the order of the workflow.
- Help texts and docstrings point to the evidence (a doc, a section), not to a study or issue
  number.
"""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import click
import numpy as np
import pytest
import typer.main

import decentdiff
from _cli import cli
from decentdiff.cli import options
from decentdiff.cli.main import WORKFLOW, app

SRC = Path(decentdiff.__file__).parent
CLI = SRC / "cli"

#: Every command that samples images, by its path under `decentdiff`.
SAMPLING = {"sample", "eval", "compare", "diagnose", "demo", "fed eval", "fed run"}
#: What every one of them takes.
SAMPLING_OPTIONS = (
    "--device",
    "--precision",
    "--solver",
    "--seed",
    "--sample-steps",
    "--n",
    "--guidance",
)
#: Calls that sample, in a command's code (directly or through the library function it calls).
SAMPLING_CALLS = {
    "generate",
    "run_eval",
    "run_compare",
    "run_diagnose",
    "run_demo",
    "evaluate_federated",
    "federate",  # fed run: trains, then scores (federated.federate)
    "fed_eval",
}

#: The old spellings, by command: old flag -> new flag (docs/cli.md, "One vocabulary").
OLD_SPELLINGS = {
    "sample": {"--steps": "--sample-steps"},
    "eval": {"--steps": "--sample-steps", "--features": "--eval-features"},
    "compare": {
        "--steps": "--sample-steps",
        "--features": "--eval-features",
        "--routings": "--routing",
        "--recompute": "--fresh",
    },
    "diagnose": {"--steps": "--sample-steps", "--routings": "--routing"},
    "fed eval": {"--steps": "--sample-steps", "--features": "--eval-features"},
    "fed run": {"--eval-n": "--n", "-n": "--clients"},
    "fed bytes": {"-n": "--clients"},
    "partition": {"--force": "--fresh"},
    "export": {"--force": "--fresh"},
}

#: Command lines of the previous README (and the docs' lines that used a renamed option).
PREVIOUS_COMMANDS = [
    "decentdiff partition runs/ddm --data mnist5k --parts 4",
    "decentdiff train experts runs/ddm --steps 3000",
    "decentdiff train router runs/ddm --steps 1000",
    "decentdiff train monolith runs/ddm --flop-match",
    "decentdiff sample runs/ddm --model ensemble --n 64 --out runs/ddm/samples/m.npz",
    "decentdiff compare runs/ddm --routings mixture,top1,topk:2,full,threshold:0.05",
    "decentdiff report runs/ddm",
    "decentdiff fed bytes --preset small --clients 5 --rounds 15",
    "decentdiff fed run runs/fed --data mnist5k --clients 5 --split dirichlet:0.5 --method udec "
    "--rounds 15",
    "decentdiff fed run runs/fed4 --data mnist5k --preset compact --recipe fedsgd --objective fm "
    "--rounds 1000 --batch 13",
    "decentdiff fed eval runs/fed --n 1000",
    "decentdiff sample runs/fed --model client:0 --out runs/fed/samples/c0.npz",
    "decentdiff fed eval runs/fed5 --n 1000 --steps 20",
    "decentdiff sample runs/m --model monolith --n 64 --solver heun --steps 30 "
    "--out runs/m/samples/a.npz",
    "decentdiff fed run runs/f --data mnist5k -n 5 --split iid --eval-n 0 --quiet",
    "decentdiff eval runs/m --model monolith --n 500 --seed 0 --steps 20 --quiet --features "
    "inception",
    "decentdiff diagnose runs/ddm --routings top1,full --steps 10",
    "decentdiff compare runs/ddm --recompute --steps 10 --features classifier",
    "decentdiff partition runs/ddm --parts 2 --by random --force",
    "decentdiff export runs/ddm shared/ddm --force",
    "decentdiff fed bytes -n 3",
]


def commands() -> dict[str, click.Command]:
    """Every command (not group) of `decentdiff`, by its path."""
    out: dict[str, click.Command] = {}

    def walk(cmd: click.Command, path: str) -> None:
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                walk(sub, f"{path} {name}".strip())
        else:
            out[path] = cmd

    walk(typer.main.get_command(app), "")
    return out


def flags(cmd: click.Command, hidden: bool | None = None) -> list[str]:
    return [
        f
        for p in cmd.params
        if isinstance(p, click.Option) and (hidden is None or p.hidden == hidden)
        for f in (*p.opts, *p.secondary_opts)
    ]


def old_spellings(cmd: click.Command) -> dict[str, str]:
    """old flag -> new flag, from the hidden options' help ("Old spelling of --new.")."""
    out = {}
    for p in cmd.params:
        if isinstance(p, click.Option) and p.hidden:
            m = re.fullmatch(options.OLD_HELP.format(new=r"(\S+)").replace(".", r"\."), p.help)
            assert m, f"hidden option {p.opts} is not an old spelling: {p.help!r}"
            out[p.opts[0]] = m.group(1)
    return out


def parse(path: str, args: list[str]) -> click.Context:
    cmd = commands()[path]
    root = click.Context(typer.main.get_command(app), info_name="decentdiff")
    return cmd.make_context(path.split()[-1], list(args), parent=root)


# --- declared once -----------------------------------------------------------------------------


def test_no_command_has_two_options_with_one_flag():
    for path, cmd in commands().items():
        seen = flags(cmd)
        twice = sorted({f for f in seen if seen.count(f) > 1})
        assert not twice, f"`decentdiff {path}`: {twice} declared by two options"


def declared_flags(path: Path) -> list[tuple[str, int]]:
    """(flag, line) of every typer.Option(...) in a module; an option without a flag string is
    reported as its own error."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "Option"
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "typer"
        ):
            if node.args and not isinstance(node.args[0], ast.Constant):
                continue  # a helper that declares options from its parameters (old_spelling)
            names = [
                a.value
                for a in node.args
                if isinstance(a, ast.Constant) and isinstance(a.value, str) and a.value[:1] == "-"
            ]
            assert names, f"{path.name}:{node.lineno}: a typer.Option without its flag spelled out"
            out += [(n.split("/")[0], node.lineno) for n in names]
    return out


def test_options_are_declared_once():
    """A flag that options.py defines is not declared again in a command module, and a flag a
    command module declares inline is declared there once (a second use belongs in options.py)."""
    # (options.py may hold variants of one flag side by side: --n with each command's default)
    shared = {f for f, _ in declared_flags(CLI / "options.py")}
    inline: dict[str, list[str]] = {}
    for module in sorted(CLI.glob("*.py")):
        if module.name in ("options.py", "__init__.py"):
            continue
        for flag, line in declared_flags(module):
            inline.setdefault(flag, []).append(f"{module.name}:{line}")
    again = {f: where for f, where in inline.items() if f in shared}
    assert not again, f"declared inline although options.py defines them: {again}"
    twice = {f: where for f, where in inline.items() if len(where) > 1}
    assert not twice, f"declared inline more than once (define them in options.py): {twice}"


def test_the_declaration_check_catches_a_second_declaration(tmp_path):
    module = tmp_path / "x.py"
    module.write_text('import typer\nA = typer.Option("--steps", help="x")\n')
    assert declared_flags(module) == [("--steps", 2)]
    module.write_text("import typer\nA = typer.Option(help='x')\n")
    with pytest.raises(AssertionError, match="without its flag"):
        declared_flags(module)


# --- sampling commands -------------------------------------------------------------------------


def samples(cmd: click.Command) -> bool:
    fn = inspect.unwrap(cmd.callback)
    calls = {
        n.func.id if isinstance(n.func, ast.Name) else getattr(n.func, "attr", "")
        for n in ast.walk(ast.parse(inspect.getsource(fn).lstrip()))
        if isinstance(n, ast.Call)
    }
    return bool(calls & SAMPLING_CALLS)


def test_the_sampling_commands_are_the_ones_that_sample():
    found = {path for path, cmd in commands().items() if samples(cmd)}
    assert found == SAMPLING, f"sample but not listed: {found - SAMPLING}; listed: {SAMPLING}"


@pytest.mark.parametrize("path", sorted(SAMPLING))
def test_every_sampling_command_takes_the_sampling_options(path):
    have = set(flags(commands()[path], hidden=False))
    missing = [f for f in SAMPLING_OPTIONS if f not in have]
    assert not missing, f"`decentdiff {path}` samples but has no {missing}"


# --- old spellings -----------------------------------------------------------------------------


def test_the_old_spellings_are_these():
    have = {path: old_spellings(cmd) for path, cmd in commands().items()}
    assert {p: o for p, o in have.items() if o} == OLD_SPELLINGS


def values(old: str, new: str, path: str) -> tuple[list[str], list[str], object, object]:
    """Command lines giving ``old`` then ``new`` with different values, and the values."""
    param = next(p for p in commands()[path].params if new in p.opts)
    if param.is_flag:
        return [old], [new], True, True
    if isinstance(param.type, click.types.IntParamType):
        return [old, "3"], [new, "4"], 3, 4
    return [old, "top1"], [new, "full"], "top1", "full"


REQUIRED = {"sample": ["r", "--out", "x.npz"], "export": ["r", "o"], "partition": ["r", "-K", "2"]}


@pytest.mark.parametrize(
    "path,old,new", [(p, o, n) for p, m in OLD_SPELLINGS.items() for o, n in m.items()]
)
def test_an_old_spelling_notes_the_new_one_and_hands_its_value_on(path, old, new, capsys):
    base = REQUIRED.get(path, [] if path == "fed bytes" else ["r"])
    o, n, ov, nv = values(old, new, path)
    name = next(p.name for p in commands()[path].params if new in p.opts)
    ctx = parse(path, [*base, *o])
    assert ctx.params[name] == ov
    assert capsys.readouterr().err == f"decentdiff: note: {old} is now {new}\n"
    assert parse(path, [*base, *n]).params[name] == nv
    assert capsys.readouterr().err == ""
    if ov != nv:  # both spellings, different values, in either order: an error
        for args in ([*o, *n], [*n, *o]):
            with pytest.raises(click.UsageError, match=f"{old} is the old spelling of {new}"):
                parse(path, [*base, *args])
    both = parse(path, [*base, *o, *n[:1], *o[1:]])  # the same value twice: fine
    assert both.params[name] == ov


def test_old_and_new_spelling_differently_is_one_line_and_exit_2(capsys, tmp_path):
    code, out, err = cli(
        capsys, "sample", tmp_path, "--steps", 3, "--sample-steps", 4, "--out", "x.npz"
    )
    lines = err.strip().splitlines()
    assert code == 2 and lines[-1].startswith("decentdiff: error: --steps is the old spelling")
    assert lines[:-1] == ["decentdiff: note: --steps is now --sample-steps"]


@pytest.mark.parametrize("line", PREVIOUS_COMMANDS)
def test_the_previous_command_lines_still_parse(line):
    args = line.split()[1:]
    path = " ".join(args[:2]) if args[0] in ("fed", "train", "data") else args[0]
    rest = args[2:] if " " in path else args[1:]
    parse(path, rest)


def test_an_old_spelling_samples_what_the_new_one_does(tmp_path, capsys):
    rng = np.random.default_rng(0)
    src = tmp_path / "toy.npz"
    np.savez(src, x=(rng.random((32, 1, 8, 8)) * 255).astype(np.uint8))
    run = tmp_path / "r"
    code, _, err = cli(capsys, "train", "monolith", run, "--data", f"npz:{src}", "--steps", 2,
                       "--preset", "tiny", "--batch", 8, "-q")  # fmt: skip
    assert code == 0, err
    common = ["sample", run, "--n", 3, "--device", "cpu"]
    code, _, err = cli(capsys, *common, "--steps", 2, "--out", tmp_path / "old.npz")
    assert code == 0 and err == "decentdiff: note: --steps is now --sample-steps\n", err
    code, _, err = cli(capsys, *common, "--sample-steps", 2, "--out", tmp_path / "new.npz")
    assert code == 0 and err == "", err
    old, new = np.load(tmp_path / "old.npz"), np.load(tmp_path / "new.npz")
    assert np.array_equal(old["images"], new["images"])
    code, _, _ = cli(capsys, *common, "--sample-steps", 3, "--out", tmp_path / "three.npz")
    assert not np.array_equal(np.load(tmp_path / "three.npz")["images"], new["images"])


# --- the help ----------------------------------------------------------------------------------


def test_help_lists_the_commands_in_the_order_of_the_workflow():
    root = typer.main.get_command(app)
    names = root.list_commands(click.Context(root))
    assert names == list(WORKFLOW), f"every command has its place in WORKFLOW: {names}"


CITATION = re.compile(r"\b(stud(y|ies)|issues?)\s*#?\d+", re.I)


def test_src_cites_no_study_or_issue_number():
    """Help and docstrings say what a thing does and where the evidence is (a doc and its
    section), not "study 10" or "issue 14", numbers a reader of --help cannot look up."""
    bad = [
        f"{p.relative_to(SRC.parent)}:{i}: {line.strip()}"
        for p in sorted(SRC.rglob("*.py"))
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if CITATION.search(line)
    ]
    assert not bad, "cite the doc, not the study or issue:\n" + "\n".join(bad)


def test_the_citation_check_catches_a_citation():
    for text in ("(study 10)", "studies 11, 17", "Study 16 measured", "issue 14", "issue #21"):
        assert CITATION.search(text), text
    assert not CITATION.search("the seeds of a study embed") and not CITATION.search("issues")
