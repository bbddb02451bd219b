"""Nothing decentdiff loads can execute code: a scan of the source, and hostile checkpoint files."""

import ast
import hashlib
import json
import pickle
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as st_save

from decentdiff.errors import CheckpointError
from decentdiff.models.registry import build_network, network_config
from decentdiff.training.checkpoint import load_into, load_tensors, read_meta, save_checkpoint

SRC = Path(__file__).resolve().parents[2] / "src" / "decentdiff"
UNSAFE_MODULES = {
    "pickle",
    "cPickle",
    "_pickle",
    "dill",
    "shelve",
    "marshal",
    "joblib",
    "cloudpickle",
}
UNSAFE_CALLS = {"eval", "exec", "compile", "__import__"}  # builtins, not methods like model.eval()


def _torch_aliases(tree: ast.AST) -> set[str]:
    """Names the module binds to torch (``import torch``, ``import torch as th``) and to its
    serialization module, whose ``load`` unpickles unless ``weights_only=True``."""
    names = {"torch", "torch.serialization"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name in ("torch", "torch.serialization") and a.asname:
                    names.add(a.asname)
        elif isinstance(node, ast.ImportFrom) and node.module == "torch":
            names |= {a.asname or a.name for a in node.names if a.name == "serialization"}
    return names


def unsafe_uses(source: str, filename: str = "<src>") -> list[str]:
    """Every construct in ``source`` that can run code hidden in data, as ``file:line what``."""
    found = []
    tree = ast.parse(source, filename)
    torch_names = _torch_aliases(tree)
    for node in ast.walk(tree):
        where = f"{filename}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            found += [
                f"{where} import {a.name}"
                for a in node.names
                if a.name.split(".")[0] in UNSAFE_MODULES
            ]
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if mod.split(".")[0] in UNSAFE_MODULES:
                found.append(f"{where} from {mod} import")
            elif mod in ("torch", "torch.serialization") and any(
                a.name == "load" for a in node.names
            ):
                found.append(f"{where} from {mod} import load (a bare load() cannot be checked)")
        elif isinstance(node, ast.Call):
            f = node.func
            kw = {k.arg: k.value for k in node.keywords}
            if isinstance(f, ast.Name) and f.id in UNSAFE_CALLS:
                found.append(f"{where} {f.id}()")
            if isinstance(f, ast.Attribute) and f.attr in ("read_pickle", "unsafe_load"):
                found.append(f"{where} .{f.attr}()")
            if (
                isinstance(f, ast.Attribute)
                and f.attr == "load"
                and ast.unparse(f.value) in torch_names
            ):
                wo = kw.get("weights_only")
                if not (isinstance(wo, ast.Constant) and wo.value is True):
                    found.append(f"{where} torch.load without weights_only=True")
            if isinstance(f, ast.Attribute) and f.attr == "load" and ast.unparse(f.value) == "yaml":
                found.append(f"{where} yaml.load")
            # importlib.import_module("pickle") / import_module(name): an import by name
            if (isinstance(f, ast.Attribute) and f.attr == "import_module") or (
                isinstance(f, ast.Name) and f.id == "import_module"
            ):
                arg = node.args[0] if node.args else None
                if not isinstance(arg, ast.Constant):
                    found.append(f"{where} import_module(<computed name>)")
                elif str(arg.value).split(".")[0] in UNSAFE_MODULES:
                    found.append(f"{where} import_module({arg.value!r})")
            # getattr(torch, "load"): the unsafe function fetched by name
            if (
                isinstance(f, ast.Name)
                and f.id == "getattr"
                and len(node.args) >= 2
                and ast.unparse(node.args[0]) in torch_names | UNSAFE_MODULES
                and not (isinstance(node.args[1], ast.Constant) and node.args[1].value != "load")
            ):
                found.append(f"{where} getattr({ast.unparse(node.args[0])}, ...)")
            ap = kw.get("allow_pickle")
            if ap is not None and not (isinstance(ap, ast.Constant) and ap.value is False):
                found.append(f"{where} allow_pickle={ast.unparse(ap)}")
    return found


def test_the_scanner_finds_what_it_looks_for_and_ignores_methods():
    bad = (
        "import pickle\nfrom dill import loads\nimport torch, numpy as np, yaml\n"
        "torch.load(p)\ntorch.load(p, weights_only=False)\nnp.load(p, allow_pickle=True)\n"
        "eval('1')\nexec('x=1')\nyaml.load(s)\n"
    )
    assert len(unsafe_uses(bad)) == 8, unsafe_uses(bad)
    ok = "model.eval()\nnet.train().eval()\ntorch.load(p, weights_only=True)\nnp.load(p)\n"
    ok += "np.load(p, allow_pickle=False)\nself.exec_cmd()\n"
    ok += "import torch as th\nth.load(p, weights_only=True)\nimportlib.import_module('json')\n"
    ok += "getattr(torch, 'nn')\n"
    assert unsafe_uses(ok) == []


@pytest.mark.parametrize(
    "planted",
    [
        "from torch import load\nload(p)\n",
        "from torch import load as L\nL(p)\n",
        "import torch as th\nth.load(p)\n",
        "import torch.serialization as ser\nser.load(p)\n",
        "from torch import serialization\nserialization.load(p)\n",
        "torch.serialization.load(p)\n",
        "import importlib\nimportlib.import_module('pickle').loads(b)\n",
        "from importlib import import_module\nimport_module('_pickle')\n",
        "import importlib\nimportlib.import_module(name)\n",
        "import torch\ngetattr(torch, 'load')(p)\n",
        "import torch\ngetattr(torch, fn)(p)\n",
        "__import__('pickle')\n",
    ],
)
def test_the_scanner_sees_aliases_and_imports_by_name(planted):
    """Each planted form of an unpickling load is found (issue 19, item 9)."""
    assert unsafe_uses(planted), planted


def test_source_has_no_unpickling_eval_or_exec():
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 30  # the scan really sees the package
    found = [u for f in files for u in unsafe_uses(f.read_text(), str(f.relative_to(SRC)))]
    assert found == [], "\n".join(found)


# ------------------------------------------------------------------ hostile checkpoint files
@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model = build_network(network_config("tiny", 1, 0))
    d = tmp_path / "ck"
    save_checkpoint(d, {"model": model.state_dict()}, {"step": 0})
    return model, d


def _replace_with_valid_checksum(d: Path, data: bytes) -> None:
    (d / "model.safetensors").write_bytes(data)
    meta = json.loads((d / "meta.json").read_text())
    meta["files"]["model.safetensors"] = hashlib.sha256(data).hexdigest()
    (d / "meta.json").write_text(json.dumps(meta))


def _fresh_params(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _mutations(sd):
    k = next(k for k, v in sd.items() if v.ndim == 4)
    yield "unexpected", {**sd, "extra.weight": torch.zeros(2)}
    yield "missing", {n: v for n, v in sd.items() if n != k}
    yield "shape", {**sd, k: torch.zeros(sd[k].shape[0] + 1, *sd[k].shape[1:])}
    yield "float64", {**sd, k: sd[k].double()}


def test_keys_shapes_and_dtypes_are_checked_before_any_tensor_is_used(saved):
    model, d = saved
    other = build_network(network_config("tiny", 1, 0))  # different random init
    for why, sd in _mutations(model.state_dict()):
        _replace_with_valid_checksum(d, st_save({k: v.contiguous() for k, v in sd.items()}))
        before = _fresh_params(other)
        with pytest.raises(CheckpointError, match=why) as e:
            load_into(other, d, "model", read_meta(d))
        assert str(d / "model.safetensors") in str(e.value)
        after = other.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before), f"{why}: weights changed"


def test_a_pickle_disguised_as_safetensors_is_never_unpickled(saved, tmp_path):
    _, d = saved
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    payload = pickle.dumps({"w": Evil()})
    pickle.loads(payload)  # the payload really does run code when unpickled ...
    assert marker.exists()
    marker.unlink()
    _replace_with_valid_checksum(d, payload)
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_tensors(d, "model", read_meta(d))
    assert not marker.exists()  # ... and loading the checkpoint did not


def test_a_header_claiming_terabytes_is_rejected_cleanly(saved):
    _, d = saved
    _replace_with_valid_checksum(d, struct.pack("<Q", 1 << 40) + b'{"w": 1}')
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        load_tensors(d, "model", read_meta(d))
