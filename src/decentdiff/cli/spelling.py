"""Old spellings of renamed options (re-exported by :mod:`.options`).

A renamed option keeps its old spelling for now: a hidden option (:func:`old_spelling`) that
prints one note naming the new spelling and hands its value to the new option, whose definition
carries ``callback=takes_old_spelling``. Giving both spellings with different values is an error.
"""

from __future__ import annotations

import weakref
from typing import Any

import click
import typer
from click.core import ParameterSource

#: Per command context (not ctx.meta, which nested contexts share): the new option's name -> (old
#: flag, value given).
_OLD: weakref.WeakKeyDictionary[click.Context, dict[str, tuple[str, Any]]] = (
    weakref.WeakKeyDictionary()
)
_GIVEN = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
OLD_HELP = "Old spelling of {new}."


def _option_with_flag(ctx: click.Context, flag: str) -> click.Parameter:
    for p in ctx.command.params:
        if flag in p.opts or flag in p.secondary_opts:
            return p
    raise RuntimeError(f"{ctx.command_path}: an old spelling names {flag}, which it does not have")


def _both_given(ctx: click.Context, old: str, new: str) -> click.UsageError:
    return click.UsageError(f"{old} is the old spelling of {new}; give one of them", ctx=ctx)


def old_spelling(old: str, new: str) -> Any:
    """A hidden option ``old`` that stands for ``new`` of the same command: given, it prints
    ``decentdiff: note: OLD is now NEW`` on stderr and ``new`` takes its value."""

    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        if ctx.resilient_parsing or ctx.get_parameter_source(param.name) not in _GIVEN:
            return
        click.echo(f"decentdiff: note: {old} is now {new}", err=True)
        target = _option_with_flag(ctx, new)
        if ctx.get_parameter_source(target.name) in _GIVEN:  # the new spelling came first
            if ctx.params.get(target.name) != value:
                raise _both_given(ctx, old, new)
            return
        _OLD.setdefault(ctx, {})[target.name] = (old, value)

    return typer.Option(
        old, hidden=True, expose_value=False, callback=callback, help=OLD_HELP.format(new=new)
    )


def takes_old_spelling(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """Callback of an option that has an old spelling: its value, or the old spelling's when
    only that was given."""
    old = _OLD.get(ctx, {}).get(param.name)
    if old is None:
        return value
    flag, old_value = old
    if ctx.get_parameter_source(param.name) not in _GIVEN:
        return old_value
    if value != old_value:
        raise _both_given(ctx, flag, param.opts[0])
    return value
