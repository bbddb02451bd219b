"""Shared by the federated tests: the ``fed`` command group mounted on the main CLI (a no-op once
the CLI has it)."""

import pytest


@pytest.fixture(autouse=True, scope="module")
def _wired():
    from decentdiff.cli import app
    from decentdiff.cli.fed import fed_app

    if not any(g.name == "fed" for g in app.registered_groups):
        app.add_typer(fed_app, name="fed")
    yield
