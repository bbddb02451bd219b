"""The ``decentdiff`` command line (entry point :func:`main`); see :mod:`.main` for the command
tree and :mod:`.options` for the options every command shares."""

from .main import app, main

__all__ = ["app", "main"]
