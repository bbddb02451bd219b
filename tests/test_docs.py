"""The front door and the user guide: README.md stays short, and what README.md and docs/ tell a
user to type, link to or quote is true.

- README.md: at most 160 lines, `make demo` and `make test` in its first 30, no paragraph over 90
  words (issue 36).
- Every `decentdiff ...` command line of README.md, BENCHMARKS.md and docs/*.md parses against the
  command tree: the command exists, every option exists and takes its value, and (in a code block)
  every required argument is given. The commands are not run here; the tests of each command do
  that.
- Every relative link of README.md and docs/*.md points to a file that exists, and to a heading of
  it that exists.
- The numbers of README's table of results appear in the section each row links to.
"""

from __future__ import annotations

import functools
import re
import shlex
from pathlib import Path

import click
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, ROOT / "BENCHMARKS.md", *DOCS]


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
INLINE = re.compile(r"(?<!`)`(decentdiff [^`]+)`(?!`)")


# --- README's shape ----------------------------------------------------------------------------


def paragraphs(text: str) -> list[str]:
    """Prose paragraphs of a markdown text: runs of consecutive lines that are not blank, not in a
    code block, not a heading, a table row, an image or a quote marker alone; each list item is a
    paragraph of its own (with its continuation lines)."""
    out: list[list[str]] = []
    cur: list[str] | None = None
    fenced = False
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("```"):
            fenced, cur = not fenced, None
            continue
        if fenced or not s or s.startswith(("#", "|", "![")) or s in (">",):
            cur = None
            continue
        item = re.match(r"([-*+]|\d+\.)\s+", s)
        if item:  # a list item starts a paragraph of its own
            cur = [s[item.end() :]]
            out.append(cur)
        elif cur is None:
            cur = [s]
            out.append(cur)
        else:
            cur.append(s)
    return [" ".join(p) for p in out]


def words(paragraph: str) -> int:
    return len(re.findall(r"\S+", paragraph))


def test_paragraphs_are_split_as_intended():
    text = "A b c.\nd e\n\n- one two\n  three\n- four\n\n```\nx y z\n```\n| a | b |\n# H\nfive"
    assert [words(p) for p in paragraphs(text)] == [5, 3, 1, 1]


def test_readme_is_a_front_door():
    text = README.read_text()
    lines = text.splitlines()
    assert len(lines) <= 160, f"README.md has {len(lines)} lines; at most 160 (issue 36)"
    first = "\n".join(lines[:30])
    for cmd in ("make demo", "make test"):
        assert re.search(rf"^{cmd}\b", first, re.M), f"`{cmd}` is not in README's first 30 lines"
    long = [(words(p), p[:60]) for p in paragraphs(text) if words(p) > 90]
    assert not long, f"README paragraphs over 90 words: {long}"


# --- commands ----------------------------------------------------------------------------------


def documented_commands(path: Path) -> list[tuple[str, bool]]:
    """(command line, from a code block) for every `decentdiff ...` the page shows: lines of its
    code blocks (not ```python or ```text ones) and inline code spans."""
    text = path.read_text()
    found: list[tuple[str, bool]] = []
    for lang, body in FENCE.findall(text):
        if lang in ("python", "text", "toml"):
            continue
        for line in body.splitlines():
            m = re.search(r"(?:^|\s-m\s)(decentdiff\s.*)", line.strip())
            if m:
                found.append((m.group(1), True))
    prose = FENCE.sub("", text)
    found += [(" ".join(m.split()), False) for m in INLINE.findall(prose)]
    return found


@functools.cache
def command_tree() -> click.Command:
    import typer.main

    from decentdiff.cli.main import app

    return typer.main.get_command(app)


def check_command(line: str, complete: bool) -> None:
    """Parse one documented command line against decentdiff's click tree; raise on an unknown
    command or option, or a bad value. ``complete``: the required arguments must be there too."""
    args = shlex.split(line.replace("[", " ").replace("]", " "), comments=True)[1:]
    # RUN, K, S, SOURCE: a placeholder the reader replaces; "1" is a valid value of every option
    args = ["1" if re.fullmatch(r"[A-Z][A-Z0-9_]*", a) else a for a in args if a != "--debug"]
    cmd = command_tree()
    ctx = click.Context(cmd, info_name="decentdiff")
    while isinstance(cmd, click.Group):
        if not args and not complete:
            return  # a group named in prose: `decentdiff fed`
        assert args, f"{line!r}: a command group without a command"
        name, args = args[0], args[1:]
        sub = cmd.get_command(ctx, name)
        assert sub is not None, f"{line!r}: no command {name!r} in `{ctx.command_path}`"
        cmd, ctx = sub, click.Context(sub, info_name=name, parent=ctx)
    if "--help" in args or "-h" in args:
        return
    try:
        cmd.make_context(ctx.info_name, list(args), parent=ctx.parent)
    except click.MissingParameter:
        if complete:
            raise
    except click.UsageError as e:
        raise AssertionError(f"{line!r}: {e.format_message()}") from None


def test_the_pages_show_commands():
    pages = {rel(p): len(documented_commands(p)) for p in PAGES}
    for name in ("README.md", "docs/getting-started.md", "docs/ddm.md", "docs/federated.md"):
        assert pages[name] >= 5, pages


@pytest.mark.parametrize("page", PAGES, ids=lambda p: rel(p))
def test_documented_commands_parse(page):
    bad = []
    for line, complete in documented_commands(page):
        try:
            check_command(line, complete)
        except (AssertionError, click.UsageError) as e:
            bad.append(f"{line}\n    {e}")
    assert not bad, f"{rel(page)}: commands that do not parse:\n" + "\n".join(bad)


@pytest.mark.parametrize(
    "line,why",
    [
        ("decentdiff trian experts runs/x", "no command 'trian'"),
        ("decentdiff train experts runs/x --stepz 3", "No such option"),
        ("decentdiff train experts runs/x --steps many", "is not a valid integer"),
        ("decentdiff sample --n 4", "Missing parameter: run"),
    ],
)
def test_a_wrong_command_is_caught(line, why):
    with pytest.raises((AssertionError, click.UsageError), match=why):
        check_command(line, complete=True)


# --- links -------------------------------------------------------------------------------------


def slug(heading: str) -> str:
    """GitHub's anchor of a markdown heading."""
    s = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return s.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text())
    seen: dict[str, int] = {}
    out = set()
    for h in re.findall(r"^#{1,6}\s+(.*?)\s*$", text, re.M):
        a = slug(h)
        n = seen.get(a, 0)
        seen[a] = n + 1
        out.add(a if n == 0 else f"{a}-{n}")
    return out


LINK = re.compile(r"\]\(([^)\s]+)\)")


def relative_links(path: Path) -> list[str]:
    text = FENCE.sub("", path.read_text())
    text = re.sub(r"`[^`]*`", "", text)
    return [u for u in LINK.findall(text) if not re.match(r"[a-z]+:", u)]


def test_slug_is_githubs():
    assert slug("bf16 vs fp32 (`--precision`): speed") == "bf16-vs-fp32---precision-speed"
    assert slug("16. (ours) Federated averaging with the central recipe") == (
        "16-ours-federated-averaging-with-the-central-recipe"
    )


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda p: rel(p))
def test_relative_links_resolve(page):
    bad = []
    for url in relative_links(page):
        file, _, anchor = url.partition("#")
        target = (page.parent / file).resolve() if file else page
        if not target.exists():
            bad.append(f"{url}: no file {target.relative_to(ROOT)}")
        elif anchor and target.suffix == ".md" and anchor not in anchors(target):
            bad.append(f"{url}: no heading #{anchor} in {target.name}")
    assert not bad, bad


# --- README's results --------------------------------------------------------------------------


def section(path: Path, anchor: str) -> str:
    """The text of the section under heading #anchor, up to the next heading of its level."""
    text = path.read_text()
    heads = [(m.start(), len(m.group(1)), slug(m.group(2))) for m in re.finditer(
        r"^(#{1,6})\s+(.*?)\s*$", text, re.M)]  # fmt: skip
    for i, (start, level, a) in enumerate(heads):
        if a == anchor:
            end = next((s for s, lv, _ in heads[i + 1 :] if lv <= level), len(text))
            return text[start:end]
    raise AssertionError(f"no heading #{anchor} in {path.name}")


def results_rows() -> list[str]:
    text = README.read_text()
    body = text.split("## Results", 1)[1].split("\n## ", 1)[0]
    return [r for r in body.splitlines() if r.startswith("|") and "---" not in r][1:]


def test_readme_results_are_quoted_from_where_they_are_measured():
    rows = results_rows()
    assert len(rows) >= 4, rows
    for row in rows:
        links = [u for u in LINK.findall(row) if "#" in u]
        numbers = set(re.findall(r"\d+\.\d+", re.sub(r"\]\([^)]*\)", "]", row)))
        if not numbers:
            continue
        assert links, f"a row with numbers and no link to where they are measured: {row}"
        source = "".join(
            section((ROOT / u.partition("#")[0]).resolve(), u.partition("#")[2]) for u in links
        )
        missing = [n for n in numbers if n not in source]
        assert not missing, f"{missing} not in the linked sections {links}: {row}"
