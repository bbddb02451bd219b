"""The federated package is built in layers: a module imports only modules of lower layers.

settings -> store, recipes -> client / strategy / evaluate -> run_config (the Flower run config,
resolved with the recipes and the clients' split) -> the Flower apps -> simulation ->
federate (what `fed run`, `fed eval` and the Python API call), above the pure
parts, aggregate, robust and privacy, and secagg (which builds on privacy) (the `fed` commands, in decentdiff.cli.fed, sit above them all). Imports inside functions count too: a lazy import that goes up a
layer is still a cycle. The layers below the Flower apps never import Flower, so the federated
logic can be imported and tested without it.
"""

import ast
import shutil
from pathlib import Path

import decentdiff.federated

PACKAGE = "decentdiff.federated"
PACKAGE_DIR = Path(decentdiff.federated.__file__).parent

#: Lowest first; a module may import only modules of layers before its own.
LAYERS = (
    ("parts",),
    ("aggregate",),
    ("robust", "privacy"),
    ("secagg",),  # --secagg --dp client clips with privacy.py's clip and releases through it
    ("settings",),
    ("store", "recipes"),
    ("client", "strategy", "evaluate"),
    ("run_config",),
    ("client_app", "server_app"),
    ("simulation",),
    ("federate",),
)
#: No `flwr` import anywhere in these (function-level imports included).
FLOWER_FREE = (
    "parts",
    "aggregate",
    "robust",
    "settings",
    "recipes",
    "run_config",
    "store",
    "client",
    "evaluate",
)
#: `decentdiff --help` imports these (the CLI's option defaults): no heavy module-level import.
LIGHT = ("settings", "recipes")
HEAVY = ("torch", "numpy", "flwr", "ray", "matplotlib", "scipy")


def imports_of(path: Path, package: str = PACKAGE, *, top_level_only: bool = False):
    """(sibling modules of ``package``, external top-level packages) that ``path`` imports."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else ast.walk(tree)
    siblings: set[str] = set()
    external: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(package + "."):
                    siblings.add(alias.name.split(".")[len(package.split("."))])
                else:
                    external.add(alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                full = ".".join([*base, node.module] if node.module else base)
            else:
                full = node.module or ""
            if full == package:  # from . import parts
                siblings.update(alias.name for alias in node.names)
            elif full.startswith(package + "."):
                siblings.add(full[len(package) + 1 :].split(".")[0])
            elif not node.level:
                external.add(full.split(".")[0])
    return siblings, external


def layer_violations(package_dir: Path, layers=LAYERS, package: str = PACKAGE) -> list[str]:
    """Every import of a module of the same or a higher layer, and every module without a layer."""
    layer = {m: i for i, group in enumerate(layers) for m in group}
    problems = []
    for path in sorted(package_dir.glob("*.py")):
        name = path.stem
        if name == "__init__":
            continue
        if name not in layer:
            problems.append(f"{name} has no layer: add it to LAYERS")
            continue
        siblings, _ = imports_of(path, package)
        for other in sorted(siblings):
            if layer.get(other, len(layers)) >= layer[name]:
                problems.append(
                    f"{name} (layer {layer[name]}) imports {other} "
                    f"(layer {layer.get(other, 'none')})"
                )
    return problems


def test_every_module_imports_only_modules_of_lower_layers():
    assert layer_violations(PACKAGE_DIR) == []


def test_the_check_sees_an_upward_import_even_inside_a_function(tmp_path):
    pkg = tmp_path / "federated"
    shutil.copytree(PACKAGE_DIR, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    store = pkg / "store.py"
    store.write_text(
        store.read_text() + "\n\ndef _up():\n    from .simulation import run_federated\n"
    )
    assert layer_violations(pkg) == ["store (layer 5) imports simulation (layer 9)"]
    (pkg / "store.py").write_text((PACKAGE_DIR / "store.py").read_text())
    (pkg / "newcomer.py").write_text("from . import parts\n")
    assert layer_violations(pkg) == ["newcomer has no layer: add it to LAYERS"]


def test_the_layers_below_the_apps_never_import_flower():
    for name in FLOWER_FREE:
        _, external = imports_of(PACKAGE_DIR / f"{name}.py")
        assert "flwr" not in external, name


def test_what_decentdiff_help_imports_has_no_heavy_module_level_import():
    for name in LIGHT:
        siblings, external = imports_of(PACKAGE_DIR / f"{name}.py", top_level_only=True)
        assert not external & set(HEAVY), (name, external & set(HEAVY))
        assert siblings <= {"settings"}, (name, siblings)
