"""docs/cli.md is the command-line reference generated from the commands by docs/gen_cli.py; it
must be what the generator writes today. After changing a command, an option or a help text:

    .venv/bin/python docs/gen_cli.py
"""

from __future__ import annotations

import difflib
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gen():
    spec = importlib.util.spec_from_file_location("gen_cli", ROOT / "docs" / "gen_cli.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_reference_is_current(gen):
    want, have = gen.render(), gen.DOC.read_text()
    if have != want:
        diff = difflib.unified_diff(
            have.splitlines(), want.splitlines(), "docs/cli.md", "generated", lineterm="", n=1
        )
        pytest.fail(
            f"docs/cli.md is stale: regenerate it with `{gen.REGENERATE}` and commit it.\n"
            + "\n".join(list(diff)[:40])
        )


def test_cli_reference_covers_every_command(gen):
    text = gen.DOC.read_text()
    paths = [ctx.command_path for ctx, _ in gen.commands()]
    assert len(paths) > 20 and "decentdiff fed run" in paths
    for path in paths:
        assert f"## `{path}`" in text, path


def test_cli_reference_does_not_depend_on_the_terminal(gen, monkeypatch):
    """A narrow terminal, colours asked for, a dumb terminal: the same page."""
    want = gen.render()
    for env in ({"COLUMNS": "40"}, {"COLUMNS": "250", "FORCE_COLOR": "1"}, {"TERM": "dumb"}):
        with monkeypatch.context() as m:
            for k, v in env.items():
                m.setenv(k, v)
            assert gen.render() == want, env
