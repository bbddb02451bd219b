"""Helpers for tests that drive the CLI in-process."""

import hashlib
from pathlib import Path

from decentdiff.cli import main


def cli(capsys, *args):
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    code = 0
    try:
        main([str(a) for a in args])
    except SystemExit as e:
        code = e.code or 0
    out, err = capsys.readouterr()
    return code, out, err


def tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _bad(capsys, run: Path | None, *args, match: str):
    before = tree_hashes(run) if run is not None and run.exists() else None
    code, _, err = cli(capsys, *args)
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("decentdiff: error:"), err
    assert "Traceback" not in err
    assert match.lower() in err.lower(), err
    if before is not None:
        assert tree_hashes(run) == before, "a failing command changed files in RUN"
