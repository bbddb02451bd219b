"""What a client keeps between rounds (issue 21, item 1): Adam with ``--client-state keep``, an
EMA for personal models, and the warm-up on the client's sequential step.

Oracles: the uninterrupted client (three rounds in one process) for a client restarted before
round 3 (its state read back from disk), and for a round re-run after a crash (the state then
comes from ``carry/.prev``); the paper's client (``reset``) for the claim that ``keep`` changes
anything; Flower's own node state for the ClientApp's round trip.
"""

import numpy as np
import pytest
import torch

pytest.importorskip("flwr")

from decentdiff import config as C
from decentdiff.federated import parts as P
from decentdiff.federated.client import CARRY_DIR, ClientData, client_turn, load_carry
from decentdiff.federated.settings import FedSettings, build_settings, fed_base
from decentdiff.federated.store import initial_arrays
from decentdiff.training.loop import Carry


def _settings(method="full", client_state="keep", ema=0.0, warmup=0):
    cfg = C.resolve(base=fed_base())
    cfg.model.preset = "tiny"
    cfg.train.batch, cfg.train.ema_decay, cfg.train.warmup, cfg.train.lr = 8, ema, warmup, 1e-3
    options = FedSettings(method=method, clients=2, rounds=3, local_steps=2,
                          client_state=client_state).validate()  # fmt: skip
    return build_settings(cfg, options, image_shape=(1, 8, 8), num_classes=0)


def _data():
    rng = np.random.default_rng(0)
    return ClientData(rng.integers(0, 256, (20, 1, 8, 8), dtype=np.uint8), None, 0, "fp", "t", 0)


def _rounds(s, out_dir, rounds, carry=None, start=None, kept=None):
    """Run ``rounds`` of one client whose server echoes its model back (a one-client FedAvg)."""
    g = start if start is not None else initial_arrays(s)
    report = P.ALL_GROUPS if not s.method_spec.personal else frozenset(s.method_spec.shared)
    updates = []
    for r in rounds:
        received = g if not updates or not s.method_spec.personal else {
            k: g[k] for k in P.keys_for(report, list(g))}  # fmt: skip
        upd, local, _, step = client_turn(s, _data(), r, received, report, kept=kept,
                                          out_dir=out_dir, carry=carry)  # fmt: skip
        kept = (local, step) if s.method_spec.personal else None
        g = local
        updates.append(upd)
    return g, updates, kept


def _equal(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_a_restarted_client_continues_exactly_from_its_saved_state(tmp_path):
    s = _settings(warmup=5)
    whole, _, _ = _rounds(s, tmp_path / "a", [1, 2, 3], carry=Carry())
    two, _, _ = _rounds(s, tmp_path / "b", [1, 2], carry=Carry())
    assert load_carry(tmp_path / "b", 2).offset == 4
    # A new process: no state in memory; round 3 must read round 2's carry from disk.
    again, _, _ = _rounds(s, tmp_path / "b", [3], carry=Carry(), start=two)
    assert _equal(whole, again)
    # A crash after the client finished round 3 but before the server saved it: round 3 is re-run
    # from the same start; the newest carry (round 3) is one round too new, .prev has round 2.
    redo, _, _ = _rounds(s, tmp_path / "b", [3], carry=Carry(), start=two)
    assert _equal(whole, redo)
    again, _, _ = _rounds(s, tmp_path / "b", [3], carry=Carry(), start=two)  # a second crash
    assert _equal(whole, again)
    c = load_carry(tmp_path / "b", 3)
    assert int(c.optimizer["opt.0.step"]) == 6  # Adam's step counts all three rounds
    assert sorted(p.name for p in (tmp_path / "b" / CARRY_DIR).iterdir()) == ["2", "3"]


def test_a_client_that_missed_a_round_continues_from_its_last_state(tmp_path, capsys):
    """Round 2 failed on this client: round 3 starts from round 1's Adam (said on stderr), not
    from a new one; a torn newest write falls back to the copy in .prev."""
    s = _settings()
    one, _, _ = _rounds(s, tmp_path / "m", [1], carry=Carry())
    _rounds(s, tmp_path / "m", [3], carry=Carry(), start=one)
    assert "no optimizer/EMA state from round 2" in capsys.readouterr().err
    assert int(load_carry(tmp_path / "m", 3).optimizer["opt.0.step"]) == 4  # 2 + 2 steps
    _rounds(s, tmp_path / "m", [3], carry=Carry(), start=one)  # round 3 again: carry/3/.prev
    (tmp_path / "m" / CARRY_DIR / "3" / "state.safetensors").write_bytes(b"torn")
    assert int(load_carry(tmp_path / "m", 3).optimizer["opt.0.step"]) == 4  # from .prev


def test_keep_carries_adam_and_reset_is_the_papers_client(tmp_path):
    keep, _, _ = _rounds(_settings(), tmp_path / "k", [1, 2], carry=Carry())
    reset, _, _ = _rounds(_settings(client_state="reset"), tmp_path / "r", [1, 2], carry=Carry())
    assert not _equal(keep, reset)  # round 2 differs: the moments carried over
    assert not (tmp_path / "r" / CARRY_DIR).exists()  # reset keeps nothing
    # Round 1 is the same for both: nothing to carry yet.
    k1, _, _ = _rounds(_settings(), tmp_path / "k1", [1], carry=Carry())
    r1, _, _ = _rounds(_settings(client_state="reset"), tmp_path / "r1", [1], carry=Carry())
    assert _equal(k1, r1)


def test_a_personal_model_keeps_an_ema_across_rounds(tmp_path):
    from decentdiff.training.checkpoint import load_tensors, read_meta

    s = _settings("udec", client_state="reset", ema=0.9)
    local, _, kept = _rounds(s, tmp_path / "u", [1, 2, 3], carry=Carry())
    meta = read_meta(tmp_path / "u")
    ema = load_tensors(tmp_path / "u", "ema", meta)
    model = load_tensors(tmp_path / "u", "model", meta)
    c = load_carry(tmp_path / "u", 3)
    assert c.optimizer is None  # reset: no Adam kept, but the EMA is
    assert all(torch.equal(ema[k], c.ema[k]) for k in ema)
    assert all(np.array_equal(model[k].numpy(), local[k]) for k in model)
    w = next(k for k in ema if k.endswith("weight"))
    assert not torch.equal(ema[w], model[w])  # the EMA slot is no longer the model
    # The EMA is the one an uninterrupted run of the same steps keeps: resume from disk equals it.
    _, _, kept2 = _rounds(s, tmp_path / "v", [1, 2], carry=Carry())
    _rounds(s, tmp_path / "v", [3], carry=Carry(), start=kept2[0], kept=kept2)
    ema2 = load_tensors(tmp_path / "v", "ema", read_meta(tmp_path / "v"))
    assert all(torch.equal(ema[k], ema2[k]) for k in ema)


def test_the_client_app_keeps_the_carry_in_flowers_node_state():
    from flwr.app import Context, RecordDict

    from decentdiff.federated.client_app import _carry_from, _carry_to

    ctx = Context(run_id=1, node_id=2, node_config={}, state=RecordDict(), run_config={})
    assert _carry_from(ctx, 2).optimizer is None
    c = Carry(offset=4, optimizer={"opt.0.step": torch.tensor(4.0),
                                   "opt.0.exp_avg": torch.randn(3)}, ema={"w": torch.randn(2, 2)})  # fmt: skip
    _carry_to(ctx, c, 2)
    back = _carry_from(ctx, 3)
    for k in c.optimizer:  # shapes too: Flower keeps a 0-d array (Adam's step) as (1,)
        assert (
            torch.equal(back.optimizer[k], c.optimizer[k])
            and back.optimizer[k].shape == c.optimizer[k].shape
        )
    assert torch.equal(back.ema["w"], c.ema["w"])
    assert _carry_from(ctx, 5).optimizer is not None  # rounds 3-4 missed: the last one is used
    assert _carry_from(ctx, 2).optimizer is None  # never a carry of the round itself


def test_a_resumed_run_must_keep_the_clients_training_recipe():
    """The schedule, Adam and EMA now run on across rounds: resuming with another lr, warm-up or
    EMA decay would silently be another experiment. The device may change."""
    from decentdiff.errors import ConfigError
    from decentdiff.federated.store import check_resumable

    old = _settings(ema=0.9, warmup=5)
    for key, value in (("ema_decay", 0.0), ("warmup", 0), ("lr", 2e-3)):
        new = _settings(ema=0.9, warmup=5)
        new.train[key] = value
        with pytest.raises(ConfigError, match=f"differs in train.{key}"):
            check_resumable(old, new)
    new = _settings(ema=0.9, warmup=5)
    new.train["device"] = "cuda"
    check_resumable(old, new)
