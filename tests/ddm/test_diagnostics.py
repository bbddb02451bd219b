"""Routing diagnostics: the expected calibration error against cases with a known answer."""

from __future__ import annotations

import numpy as np
import torch

from decentdiff.ddm.calibration import expected_calibration_error
from decentdiff.ddm.ensemble import EnsembleVelocity


def test_ece_known_cases():
    rng = np.random.default_rng(0)
    # Overconfident: always certain, right half of the time -> ECE = |0.5 - 1| = 0.5 exactly.
    probs = np.eye(3)[rng.integers(0, 3, 1000)]
    target = np.where(rng.random(1000) < 0.5, probs.argmax(1), (probs.argmax(1) + 1) % 3)
    assert (
        abs(expected_calibration_error(probs, target) - abs((probs.argmax(1) == target).mean() - 1))
        < 1e-12
    )
    # Calibrated by construction: the label is drawn from the predicted distribution.
    logits = rng.normal(size=(20000, 4)) * 2
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = np.array([rng.choice(4, p=row) for row in p])
    assert expected_calibration_error(p, y) < 0.02
    # Re-derived by hand on 4 points: two confidence bins (0.6 and 0.9), one error in each.
    p = np.array([[0.6, 0.4], [0.6, 0.4], [0.9, 0.1], [0.9, 0.1]])
    y = np.array([0, 1, 0, 1])
    assert abs(expected_calibration_error(p, y) - (0.5 * 0.1 + 0.5 * 0.4)) < 1e-12


def test_history_records_each_call():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    ens = EnsembleVelocity([lambda x, t, c=None: x] * 2, lambda x, t, c=None: logits, "top1")
    ens.history = []
    x = torch.zeros(2, 1)
    ens(x, torch.full((2,), 0.7))
    ens(x, torch.full((2,), 0.3))
    assert np.allclose([float(t[0]) for t, _ in ens.history], [0.7, 0.3])
    assert torch.equal(ens.history[1][1].argmax(1), torch.tensor([0, 1]))
