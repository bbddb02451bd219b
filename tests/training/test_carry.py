"""`train(carry=...)`: a model trained in pieces equals the same model trained in one call.

The oracle is the uninterrupted run itself: N steps, then N more with the Carry of the first call,
must give bitwise the weights, EMA and Adam state of one 2N-step call (warm-up and EMA warm-up
included). A federated client with ``--client-state keep`` relies on exactly this.
"""

import torch
from torch import nn

from decentdiff.config import TrainConfig
from decentdiff.training.loop import Carry, train


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))


def _loss(m, g):
    x = torch.randn(16, 4, generator=g)
    return ((m(x) - x.sum(1, keepdim=True).sin()) ** 2).mean()


def _cfg(steps):
    return TrainConfig(steps=steps, lr=1e-2, warmup=6, ema_decay=0.9, batch=16, seed=3,
                       ckpt_every=steps, log_every=steps, precision="fp32")  # fmt: skip


def _run(tmp_path, pieces, carry_on=True):
    m = _model()
    carry = Carry()
    for i, n in enumerate(pieces):
        c = carry if carry_on else Carry(offset=sum(pieces[:i]))
        train(m, _loss, tmp_path / f"p{i}", _cfg(n), fresh=True, carry=c, progress=False,
              flops_per_step=1.0)  # fmt: skip
        carry = c
    return m, carry


def test_two_pieces_with_a_carry_equal_one_call(tmp_path):
    whole, c1 = _run(tmp_path / "a", [10])
    split, c2 = _run(tmp_path / "b", [4, 6])
    for k, v in whole.state_dict().items():
        assert torch.equal(v, split.state_dict()[k]), k
    assert c1.offset == c2.offset == 10
    assert c1.optimizer.keys() == c2.optimizer.keys()
    for k in c1.optimizer:
        assert torch.equal(c1.optimizer[k], c2.optimizer[k]), k
    assert int(c2.optimizer["opt.0.step"]) == 10  # Adam's step ran on across the pieces
    for k in c1.ema:
        assert torch.equal(c1.ema[k], c2.ema[k]), k
    assert not torch.equal(c1.ema["0.weight"], whole.state_dict()["0.weight"])  # a real EMA


def test_without_the_carried_optimizer_the_pieces_differ(tmp_path):
    """The same schedule offset but a new Adam (the paper's client) is not the same run: the
    test above could fail."""
    whole, _ = _run(tmp_path / "a", [10])
    split, c = _run(tmp_path / "b", [4, 6], carry_on=False)
    assert int(c.optimizer["opt.0.step"]) == 6
    assert not torch.equal(whole.state_dict()["0.weight"], split.state_dict()["0.weight"])


def test_the_offset_continues_the_warm_up(tmp_path):
    """Step k of the second piece is trained at lr_at(offset + k): its first lr is the warm-up's
    5th value, lr·5/6, not lr·1/6 (read from the log row of a 1-step piece)."""
    import json

    from decentdiff.training import loop

    m = _model()
    rows = tmp_path / "m.jsonl"
    c = Carry(offset=4)
    cfg = _cfg(1)
    train(m, _loss, tmp_path / "x", cfg, fresh=True, carry=c, progress=False,
          flops_per_step=1.0, metrics_path=rows)  # fmt: skip
    lr = json.loads(rows.read_text().splitlines()[-1])["lr"]
    assert lr == cfg.lr * 5 / 6 == loop.lr_at(4, cfg)
    assert c.offset == 5 and int(c.optimizer["opt.0.step"]) == 1
