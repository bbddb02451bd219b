"""train.optimizer: plain SGD (FedSGD-style clients) beside the default AdamW.

Oracle: gradient descent re-derived by hand -- w <- w - lr * dL/dw with the gradient from
torch.autograd.grad on a fixed (batch-free) loss, no warm-up, no clipping -- and PyTorch's own AdamW
loop for the default.
"""

import re

import pytest
import torch
from torch import nn

from decentdiff import config as C
from decentdiff.config import TrainConfig
from decentdiff.errors import ConfigError
from decentdiff.training.loop import Carry, train

X = torch.linspace(-1, 1, 24).reshape(6, 4)


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))


def _loss(m, g):  # no randomness: the oracle below sees the same loss
    return ((m(X) - X.sum(1, keepdim=True).sin()) ** 2).mean()


def _cfg(optimizer, steps=5, **kw):
    return TrainConfig(steps=steps, lr=0.05, warmup=0, grad_clip=0.0, ema_decay=0.9, batch=6,
                       ckpt_every=steps, log_every=steps, precision="fp32", optimizer=optimizer,
                       **kw)  # fmt: skip


def test_sgd_is_plain_gradient_descent(tmp_path):
    m = _model()
    train(m, _loss, tmp_path / "r", _cfg("sgd"), progress=False, flops_per_step=1.0)
    ref = _model()
    params = list(ref.parameters())
    for _ in range(5):
        grads = torch.autograd.grad(_loss(ref, None), params)
        with torch.no_grad():
            for p, gr in zip(params, grads, strict=True):
                p -= 0.05 * gr
    for (k, v), w in zip(m.state_dict().items(), ref.state_dict().values(), strict=True):
        torch.testing.assert_close(v, w, rtol=1e-5, atol=1e-6, msg=k)


def test_default_is_adamw_and_sgd_carries_no_state(tmp_path):
    assert TrainConfig().optimizer == "adamw"
    m = _model()
    train(m, _loss, tmp_path / "a", _cfg("adamw"), progress=False, flops_per_step=1.0)
    ref = _model()
    opt = torch.optim.AdamW(ref.parameters(), lr=0.05, weight_decay=0.0)
    for _ in range(5):
        opt.zero_grad()
        _loss(ref, None).backward()
        opt.step()
    for (k, v), w in zip(m.state_dict().items(), ref.state_dict().values(), strict=True):
        torch.testing.assert_close(v, w, rtol=1e-5, atol=1e-6, msg=k)
    c = Carry()
    train(_model(), _loss, tmp_path / "s", _cfg("sgd"), fresh=True, carry=c, progress=False,
          flops_per_step=1.0)  # fmt: skip
    assert c.offset == 5 and not c.optimizer  # plain SGD has no state to carry


def test_resuming_with_another_optimizer_is_refused(tmp_path):
    train(_model(), _loss, tmp_path / "r", _cfg("adamw", steps=2), progress=False,
          flops_per_step=1.0)  # fmt: skip
    with pytest.raises(ConfigError, match=r"train\.optimizer=adamw.*--fresh"):
        train(_model(), _loss, tmp_path / "r", _cfg("sgd", steps=4), progress=False,
              flops_per_step=1.0)  # fmt: skip


def test_a_checkpoint_from_before_the_option_resumes_as_adamw(tmp_path):
    import json

    train(_model(), _loss, tmp_path / "r", _cfg("adamw", steps=2), progress=False,
          flops_per_step=1.0)  # fmt: skip
    meta = json.loads((tmp_path / "r" / "meta.json").read_text())
    del meta["train"]["optimizer"]  # as written before train.optimizer existed
    (tmp_path / "r" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match=r"train\.optimizer=adamw"):
        train(_model(), _loss, tmp_path / "r", _cfg("sgd", steps=4), progress=False,
              flops_per_step=1.0)  # fmt: skip
    out = train(_model(), _loss, tmp_path / "r", _cfg("adamw", steps=4), progress=False,
                flops_per_step=1.0)  # fmt: skip
    assert out["step"] == 4


def test_unknown_optimizer_is_one_clear_error():
    with pytest.raises(
        ConfigError, match=re.escape("train.optimizer = 'lion': choose one of adamw, sgd")
    ):
        C.resolve(sets=["train.optimizer=lion"])
    assert C.resolve(sets=["train.optimizer=sgd"]).train.optimizer == "sgd"
