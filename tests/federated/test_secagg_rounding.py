"""``--secagg --dp client``: SecAgg+'s rounding ρ against the DP clip C, checked before round 1
(``secagg.check_rounding``, called by ``build_settings``). The oracle here counts d from the
tiny UNet's own state dict (the floating tensors a client uploads, groups written out by their
top-level modules, not taken from parts.py) and writes ρ = √d·2c/2^bits out; a C just either
side of ρ and of 10ρ must refuse / warn / pass quietly. No Ray, no training."""

import math
import re

import pytest
import torch

from decentdiff import config as C
from decentdiff.errors import ConfigError
from decentdiff.federated import secagg as S
from decentdiff.federated.settings import FedSettings, build_settings, fed_base
from decentdiff.models.registry import build_network, config_from_dict, network_config

SHAPE = (1, 8, 8)  # digits' images
SIGMA = 1.0
#: What each method's clients upload, by the state dict's top-level modules (docs/federated.md).
UPLOADED = {"full": None, "udec": ("up", "out"), "ulatdec": ("up", "out", "mid")}


def _settings(**kw):
    """build_settings for the tiny UNet on digits-shaped images (what ``fed run`` calls before
    RUN is touched); ``kw``: run options over a valid ``--secagg --dp client`` run."""
    cfg = C.resolve(base=fed_base())
    cfg.model.preset = "tiny"
    opts = dict(clients=3, secagg=True, dp="client", dp_clip=0.05, noise_multiplier=SIGMA)
    options = FedSettings(**{**opts, **kw}).validate()
    return build_settings(cfg, options, image_shape=SHAPE, num_classes=0)


def _d(method="full"):
    """Floating weights a client of ``method`` uploads, from the tiny UNet's state dict."""
    sd = build_network(config_from_dict(network_config("tiny", SHAPE[0], 0).to_dict())).state_dict()
    tops = UPLOADED[method]
    return sum(
        v.numel()
        for k, v in sd.items()
        if v.is_floating_point() and (tops is None or k.split(".", 1)[0] in tops)
    )


def _rho(d, clip=8.0, bits=22):
    return math.sqrt(d) * 2 * clip / 2**bits


def test_the_tiny_unet_at_the_defaults():
    """The numbers docs/federated.md quotes: d = 87,201 (FULL), ρ = 1.1265·10⁻³ at c = 8, 22
    bits, so a --dp-clip C ≤ 10ρ = 0.01126 warns and C ≤ ρ = 0.001126 is refused."""
    d = _d()
    assert d == 87_201
    assert _rho(d) == pytest.approx(1.1265e-3, rel=1e-4)
    assert f"{10 * _rho(d):.4g} {_rho(d):.4g}" == "0.01126 0.001126"
    assert S.ROUNDING_REFUSE == 1.0 and S.ROUNDING_WARN == 0.1


@pytest.mark.parametrize(
    ("ratio", "outcome"),
    [
        (0.9999, "refused"),  # C just below ρ: σ_eff < σ/2
        (1.0001, "warned"),  # C just above ρ
        (9.999, "warned"),  # C just below 10ρ: σ_eff < σ/1.1
        (10.001, "quiet"),  # C just above 10ρ
        (100.0, "quiet"),
    ],
)
def test_a_dp_clip_either_side_of_the_thresholds(ratio, outcome, capsys):
    rho = _rho(_d())
    clip = rho * ratio
    eff = SIGMA * clip / (clip + rho)
    if outcome == "refused":
        with pytest.raises(ConfigError) as e:
            _settings(dp_clip=clip)
        msg = str(e.value)
        assert "\n" not in msg and msg.startswith("--secagg --dp client: SecAgg+'s rounding")
        assert f"ρ = √d·2c/2^bits = {rho:.3g}" in msg and "d = 87,201 weights" in msg
        assert f"σ_eff = σ·C/(C + ρ) = {eff:.3g}" in msg and f"σ = {SIGMA:g}" in msg
        assert "raise --secagg-bits to" in msg and "--dp-clip" in msg
        assert capsys.readouterr().err == ""
        return
    s = _settings(dp_clip=clip)
    assert S.check_rounding(s) == pytest.approx(rho, rel=1e-12)
    err = capsys.readouterr().err
    if outcome == "quiet":
        assert err == ""
        return
    lines = err.splitlines()
    assert len(lines) == 2  # one from build_settings, one from the call above: one line each
    assert lines[0] == lines[1] and lines[0].startswith("decentdiff: warning: --secagg --dp client")
    assert f"σ_eff = σ·C/(C + ρ) = {eff:.3g} instead of σ = {SIGMA:g}" in lines[0]
    assert f"is {rho / clip:.0%} of --dp-clip {clip:g}" in lines[0]
    assert "raise --secagg-bits to" in lines[0]


def test_the_fixes_it_names_do_fix_it(capsys):
    """Each fix the refusal names, applied alone, gives a quiet run (ρ < C/10), and one bit fewer
    than the --secagg-bits it names does not."""
    rho = _rho(_d())
    clip = rho / 2
    with pytest.raises(ConfigError) as e:
        _settings(dp_clip=clip)
    msg = str(e.value)
    bits = int(re.search(r"raise --secagg-bits to (\d+)", msg).group(1))
    top = float(re.search(r"lower --secagg-clip below ([0-9.e+-]+) ", msg).group(1))
    low = float(re.search(r"raise --dp-clip above ([0-9.e+-]+)", msg).group(1))
    assert _rho(_d(), bits=bits) < clip / 10 <= _rho(_d(), bits=bits - 1)
    for kw in (
        {"secagg_bits": bits},
        {"secagg_clip": top * 0.999},
        {"dp_clip": low * 1.001},
    ):
        _settings(**{"dp_clip": clip, **kw})
        assert capsys.readouterr().err == "", kw
    _settings(dp_clip=clip, secagg_bits=bits - 1)
    assert "decentdiff: warning:" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("method", "full_rounds"), [("udec", 0), ("udec", 1), ("ulatdec", 0), ("full", 0)]
)
def test_d_is_what_the_method_uploads_in_its_largest_round(method, full_rounds, capsys):
    """UDEC uploads the decoder, ULATDEC the decoder and the bottleneck, but --full-rounds'
    FULL rounds upload everything: ρ is the largest round's. A C that warns for the whole model
    passes UDEC quietly, and warns again for UDEC with a FULL round first."""
    d = _d("full" if full_rounds else method)
    assert (d < _d()) == (method != "full" and not full_rounds)
    rho = _rho(d)
    s = _settings(method=method, full_rounds=full_rounds, rounds=2, dp_clip=10.001 * rho)
    assert capsys.readouterr().err == ""
    assert S.check_rounding(s) == pytest.approx(rho, rel=1e-12)
    full = _rho(_d())
    if d < _d():  # a C that would warn for the whole model passes this method quietly
        assert 10.001 * rho < 9.999 * full
        _settings(method=method, dp_clip=9.999 * full)
        assert capsys.readouterr().err == ""
    else:
        _settings(method=method, full_rounds=full_rounds, rounds=2, dp_clip=9.999 * full)
        assert "decentdiff: warning:" in capsys.readouterr().err


def test_no_check_without_secagg_or_dp():
    assert S.check_rounding(FedSettings(clients=3, dp="client", dp_clip=1e-9,
                                        noise_multiplier=1).validate()) is None  # fmt: skip
    assert S.check_rounding(FedSettings(clients=3, secagg=True).validate()) is None


def test_the_check_leaves_the_callers_torch_generator_alone():
    torch.manual_seed(123)
    want = torch.rand(3)
    torch.manual_seed(123)
    _settings()
    assert torch.equal(torch.rand(3), want)


def test_fed_run_refuses_before_anything_is_written(capsys, tmp_path, monkeypatch):
    from tests._cli import cli

    from decentdiff.federated import simulation

    def no_rounds(*a, **k):  # without the check this test fails here, before Ray starts
        raise AssertionError("fed run got to its rounds")

    monkeypatch.setattr(simulation, "_simulate", no_rounds)
    run = tmp_path / "run"
    code, _, err = cli(
        capsys, "fed", "run", run, "--data", "digits", "--preset", "tiny", "--clients", "3",
        "--secagg", "--dp", "client", "--dp-clip", "0.001", "--noise-multiplier", "1",
        "--rounds", "1", "--n", "0",
    )  # fmt: skip
    assert code == 2
    assert "error: --secagg --dp client: SecAgg+'s rounding ρ = √d·2c/2^bits = 0.00113" in err
    assert "is 113% of --dp-clip 0.001" in err and "raise --secagg-bits to 26" in err
    assert not run.exists()


def test_flwr_run_settings_are_checked_too():
    """``flwr run`` / deployment: the ServerApp's settings come through the same build_settings."""
    from decentdiff.federated.run_config import settings_from_run_config

    rc = {"clients": 3, "secagg": True, "dp": "client", "noise-multiplier": 1.0,
          "preset": "tiny", "image-shape": "1,8,8"}  # fmt: skip
    with pytest.raises(ConfigError, match="SecAgg\\+'s rounding"):
        settings_from_run_config({**rc, "dp-clip": 0.001})
    assert settings_from_run_config({**rc, "dp-clip": 0.05}).dp_clip == 0.05
