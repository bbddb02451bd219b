"""Objectives and conversions against re-derived formulas and diffusers' DDPMScheduler."""

import math

import numpy as np
import pytest
import torch

from decentdiff.diffusion import paths as P
from decentdiff.errors import ConfigError


def gaussian_velocity(x, t, mu, s):
    """Exact E[ε − x0 | x_t] for x0 ~ N(mu, s²) per coordinate, x_t = (1−t)x0 + tε (re-derived)."""
    t = t.reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)
    var = (1 - t) ** 2 * s**2 + t**2
    r = x - (1 - t) * mu
    x0 = mu + (1 - t) * s**2 / var * r
    eps = t / var * r
    return eps - x0


def test_flow_matching_noisy_and_target():
    fm = P.FlowMatching(time_dist="uniform")
    x0, eps, t = torch.randn(4, 1, 3, 3), torch.randn(4, 1, 3, 3), torch.rand(4)
    xt = fm.noisy(x0, t, eps)
    tb = t[:, None, None, None]
    assert torch.allclose(xt, (1 - tb) * x0 + tb * eps)
    # Conversions: x̂0 and ε̂ from the true velocity recover x0 and ε exactly.
    v = eps - x0
    assert torch.allclose(P.x0_from_velocity(xt, t, v), x0, atol=1e-6)
    assert torch.allclose(P.eps_from_velocity(xt, t, v), eps, atol=1e-6)


def test_flow_matching_loss_is_mse_to_velocity():
    class Oracle(torch.nn.Module):
        # A "model" that returns the exact target for the noise the loss draws is impossible, so
        # instead check the loss equals E||f − (ε − x0)||² computed by hand with the same draws.
        def forward(self, x, t, cond=None):
            return torch.zeros_like(x)

    fm = P.FlowMatching(time_dist="uniform")
    x0 = torch.randn(8, 1, 4, 4)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    loss = fm.loss(Oracle(), x0, None, g1)
    torch.rand(8, generator=g2)
    eps = torch.randn(x0.shape, generator=g2)
    assert torch.allclose(loss, ((eps - x0) ** 2).mean())


def test_logit_normal_times_in_unit_interval_and_centered():
    fm = P.FlowMatching()
    t = fm.sample_t(20000, torch.Generator().manual_seed(0))
    assert (t > 0).all() and (t < 1).all()
    assert abs(t.median().item() - 0.5) < 0.02


@pytest.mark.parametrize(
    "schedule,diffusers_name", [("linear", "linear"), ("cosine", "squaredcos_cap_v2")]
)
def test_ddpm_schedule_and_noising_match_diffusers(schedule, diffusers_name):
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=diffusers_name)
    d = P.DDPM(schedule=schedule)
    assert torch.allclose(d.betas.float(), ref.betas.float(), atol=1e-6)
    x0, eps = torch.randn(6, 1, 5, 5), torch.randn(6, 1, 5, 5)
    n = torch.tensor([0, 1, 10, 500, 998, 999])
    ours = d.q_sample(x0.double(), n, eps.double()).float()
    assert torch.allclose(ours, ref.add_noise(x0, eps, n), atol=1e-5)


def test_time_alpha_bar_round_trip_and_snr_match():
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    ab = P.alpha_bar_from_time(t)
    assert torch.allclose(P.time_from_alpha_bar(ab), t, atol=1e-12)
    # SNR of the flow state (1−t)²/t² equals that of the DDPM state ᾱ/(1−ᾱ).
    assert torch.allclose((1 - t) ** 2 / t**2, ab / (1 - ab), rtol=1e-10)
    # c·x_t is variance preserving: c²((1−t)² + t²) = 1.
    assert torch.allclose(P.vp_scale(t) ** 2 * ((1 - t) ** 2 + t**2), torch.ones_like(t))


def test_step_from_time_inverts_time_of_step():
    d = P.DDPM()
    n = torch.tensor([0, 3, 100, 500, 900, 998])
    t = d.time_of_step(n)
    assert torch.allclose(d.step_from_time(t), n.double(), atol=1e-6)
    # Monotone in between.
    tt = torch.linspace(0.02, 0.98, 200)
    s = d.step_from_time(tt)
    assert (s[1:] >= s[:-1]).all()


def test_epsilon_converter_matches_closed_form_velocity():
    """An exact ε-model of Gaussian data, seen through the converter, gives the exact flow velocity."""
    mu, s = 0.3, 0.7
    d = P.DDPM()

    class ExactEps(torch.nn.Module):
        # Optimal ε-predictor in DDPM space at integer step n: x' = √ᾱ x0 + √(1−ᾱ) ε,
        # E[ε | x'] = √(1−ᾱ) (x' − √ᾱ μ) / (ᾱ s² + 1 − ᾱ).
        def forward(self, x, tau, cond=None):
            n = (tau.double() * d.timesteps).round().long()
            ab = d.alphas_cumprod[n].reshape(-1, 1, 1, 1)
            return ((1 - ab).sqrt() * (x.double() - ab.sqrt() * mu) / (ab * s**2 + 1 - ab)).to(
                x.dtype
            )

    v_fn = P.EpsilonVelocity(ExactEps(), d, clip_x0=None)
    n = torch.tensor([5, 50, 200, 400, 700, 900])
    t = d.time_of_step(n)
    x = torch.randn(6, 1, 4, 4, dtype=torch.float64) * 1.5
    got = v_fn(x, t)
    want = gaussian_velocity(x, t, mu, s)
    assert torch.allclose(got, want, atol=1e-8, rtol=1e-6)


def test_epsilon_converter_guards_t_near_one():
    d = P.DDPM()
    model = lambda x, tau, cond=None: torch.randn_like(x)  # noqa: E731
    v = P.EpsilonVelocity(model, d, clip_x0=1.0)(torch.randn(3, 1, 2, 2), torch.ones(3))
    assert torch.isfinite(v).all()


def test_unknown_choices_are_config_errors():
    with pytest.raises(ConfigError, match="fm, ddpm"):
        P.make_objective("edm")
    with pytest.raises(ConfigError, match="linear, cosine"):
        P.DDPM(schedule="sigmoid")
    with pytest.raises(ConfigError, match="mse, huber"):
        P.FlowMatching(loss="l3")


def test_huber_loss_option():
    fm = P.FlowMatching(loss="huber", time_dist="uniform")
    zero = lambda x, t, c=None: torch.zeros_like(x)  # noqa: E731
    x0 = torch.full((2, 1, 2, 2), 3.0)
    g = torch.Generator().manual_seed(0)
    loss = fm.loss(zero, x0, None, g)
    g = torch.Generator().manual_seed(0)
    torch.rand(2, generator=g)
    eps = torch.randn(x0.shape, generator=g)
    r = (eps - x0).abs()
    want = torch.where(r < 1, 0.5 * r**2, r - 0.5).mean()
    assert math.isclose(loss.item(), want.item(), rel_tol=1e-6)


def test_velocity_weighting_is_the_flow_loss_of_the_converted_velocity():
    """weighting=velocity:G: the ε-loss weighted by min(1/(1 − t)², G). Below the cap this is
    exactly the squared error of the velocity the converter makes from ε̂ (re-derived here: the
    flow state x_t = x'/c, v̂ = EpsilonVelocity(ε̂), v = ε − x0)."""
    d = P.DDPM(weighting="velocity:1e9")
    n = torch.tensor([10, 200, 500, 800, 950])
    x0 = torch.rand(5, 1, 3, 3, dtype=torch.float64) * 2 - 1
    eps = torch.randn(5, 1, 3, 3, dtype=torch.float64)
    err = 0.01 * torch.randn(5, 1, 3, 3, dtype=torch.float64)
    x_vp = d.q_sample(x0, n, eps)
    t = d.time_of_step(n)
    x_flow = x_vp / P.bcast(P.vp_scale(t), x_vp)
    model = lambda x, tau, cond=None: eps + err  # noqa: E731  an ε-model off by err
    v_hat = P.EpsilonVelocity(model, d, clip_x0=None)(x_flow, t)
    flow_loss = (v_hat - (eps - x0)).pow(2).flatten(1).mean(1)
    w = d.loss_weight(t).double()
    assert torch.allclose(w * err.pow(2).flatten(1).mean(1), flow_loss, rtol=1e-4)
    # The weights by NumPy from the schedule alone: ᾱ, then t = √(1−ᾱ)/(√ᾱ + √(1−ᾱ)).
    ab = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))[n.numpy()]
    t_np = np.sqrt(1 - ab) / (np.sqrt(ab) + np.sqrt(1 - ab))
    capped = P.DDPM(weighting="velocity:100").loss_weight(d.time_of_step(n)).numpy()
    assert np.allclose(capped, np.minimum(1 / (1 - t_np) ** 2, 100), rtol=1e-5)
    assert P.DDPM().loss_weight(t) is None  # uniform: Ho et al.'s simple loss


def test_weighted_loss_and_bad_weightings():
    d = P.DDPM(weighting="velocity:100")
    net = torch.nn.Conv2d(1, 1, 1)
    model = lambda x, tau, cond=None: net(x)  # noqa: E731
    loss = d.loss(model, torch.zeros(4, 1, 2, 2), None, torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and net.weight.grad is not None
    for bad in ("velocity", "velocity:0.5", "velocity:x", "velocity:inf", "velocity:nan", "snr"):
        with pytest.raises(ConfigError, match="uniform or velocity:G"):
            P.DDPM(weighting=bad)
    with pytest.raises(ConfigError, match="applies to --objective ddpm only"):
        P.make_objective("fm", weighting="velocity:100")


def test_eps_param_choices_and_legacy_records(tmp_path):
    """``objective.eps_param``: unknown values are refused; a record written before the field
    existed (no ``eps_param`` key) is read as the network it was trained as (``direct``)."""
    import json

    import numpy as np

    from decentdiff.config import Config, ObjectiveConfig
    from decentdiff.training.generative import load_generative, train_generative

    with pytest.raises(ConfigError, match="eps_param 'x'; choose one of: direct, skip"):
        P.DDPM(eps_param="x")
    assert ObjectiveConfig.from_meta({"kind": "ddpm"}).eps_param == "direct"
    assert ObjectiveConfig.from_meta({"kind": "ddpm", "eps_param": "skip"}).eps_param == "skip"
    cfg = Config()
    cfg.model.preset, cfg.objective.kind, cfg.objective.eps_param = "tiny", "ddpm", "skip"
    cfg.train.steps, cfg.train.batch = 2, 4
    images = np.random.default_rng(0).integers(0, 255, (8, 1, 8, 8), dtype=np.uint8)
    out = tmp_path / "m"
    train_generative(out, images, None, 0, cfg, role="monolith", progress=False)
    assert load_generative(out)[3].eps_param == "skip"
    meta = json.loads((out / "meta.json").read_text())
    # Resuming with another ε-network would train one network as the other: refused, named.
    cfg.train.steps, cfg.objective.eps_param = 4, "direct"
    with pytest.raises(ConfigError, match=r"objective.eps_param=skip, not direct; resume with"):
        train_generative(out, images, None, 0, cfg, role="monolith", progress=False)
    del meta["objective"]["eps_param"]  # as an earlier version wrote it
    (out / "meta.json").write_text(json.dumps(meta))
    assert load_generative(out)[3].eps_param == "direct"
    # ... and such a checkpoint resumes as direct, not as today's default.
    cfg.objective.eps_param = "skip"
    with pytest.raises(ConfigError, match=r"objective.eps_param=direct, not skip"):
        train_generative(out, images, None, 0, cfg, role="monolith", progress=False)


def test_an_old_run_toml_reads_as_a_direct_eps_run(tmp_path):
    """A RUN's run.toml written before `objective.eps_param` existed: its ddpm objective resolves
    to direct (as trained then); a flow-matching RUN takes today's default for new ε-experts."""
    from decentdiff.config import resolve
    from decentdiff.run import Run

    old = 'kind = "{}"\nloss = "mse"\nschedule = "linear"\ntimesteps = 1000\n'
    for kind, want in (("ddpm", "direct"), ("fm", "skip")):
        (tmp_path / "run.toml").write_text("[objective]\n" + old.format(kind))
        cfg = resolve(base=Run(tmp_path).base_config())
        assert cfg.objective.eps_param == want, kind
        # Whatever the RUN's kind, an ε-expert trained in it later takes Ho et al.'s steps and
        # weighting, as the RUN's ε-experts of then did -- not today's `auto` (study 18).
        eps = resolve(base=Run(tmp_path).base_config(), objective="ddpm").objective.resolved()
        assert (eps.weighting, eps.step_dist) == ("uniform", "uniform"), kind
        # A run.toml that has weighting but predates step_dist: still Ho et al.'s steps.
        (tmp_path / "run.toml").write_text(
            "[objective]\n" + old.format(kind) + 'weighting = "uniform"\neps_param = "skip"\n'
        )
        eps = resolve(base=Run(tmp_path).base_config(), objective="ddpm").objective.resolved()
        assert (eps.weighting, eps.step_dist) == ("uniform", "uniform"), kind
    # A new RUN's run.toml keeps `auto`: its kind is each command's (--objective).
    (tmp_path / "run.toml").write_text(
        '[objective]\nkind = "fm"\nweighting = "auto"\nstep_dist = "auto"\n'
    )
    eps = resolve(base=Run(tmp_path).base_config(), objective="ddpm").objective.resolved()
    assert (eps.weighting, eps.step_dist) == ("velocity:100", "logit_normal")


@pytest.mark.parametrize("kind", ["ddpm", "vpred"])
def test_logit_normal_step_dist_draws_flow_matchings_noise_levels(kind):
    """``objective.step_dist=logit_normal``: the network sees the VP state of a flow time
    t ~ logit-normal(0, 1) (the same draw as flow matching's), with ᾱ = (1−t)²/((1−t)²+t²)
    re-derived in NumPy, at a fractional step whose schedule SNR brackets t's, and the loss is
    the objective's own target at that ᾱ."""
    obj = P.make_objective(kind, step_dist="logit_normal", eps_param="skip")
    seen = {}

    class Spy(torch.nn.Module):
        def forward(self, x, tau, cond=None):
            seen["x"], seen["tau"] = x, tau
            return torch.zeros_like(x)

    x0 = torch.randn(64, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    loss = obj.loss(Spy(), x0, None, torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(1)
    t = 1 / (1 + np.exp(-torch.randn(64, generator=gen, dtype=torch.float64).numpy()))
    eps = torch.randn(x0.shape, generator=gen).double().numpy()
    ab = (1 - t) ** 2 / ((1 - t) ** 2 + t**2)
    a, s = np.sqrt(ab)[:, None, None, None], np.sqrt(1 - ab)[:, None, None, None]
    z = a * x0.double().numpy() + s * eps
    np.testing.assert_allclose(seen["x"].numpy(), z, rtol=1e-5, atol=1e-6)
    # The fractional step: the schedule's ᾱ at its floor is ≥ ᾱ(t) ≥ the one at its ceiling.
    sched = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    step = seen["tau"].double().numpy() * 1000
    lo, hi = np.floor(step).astype(int), np.minimum(np.floor(step).astype(int) + 1, 999)
    assert (sched[lo] >= ab * (1 - 1e-4)).all() and (sched[hi] <= ab * (1 + 1e-4)).all()
    # F = 0: the skip ε-model says ε̂ = √(1−ᾱ)·z; the v-model's target is √ᾱ·ε − √(1−ᾱ)·x0.
    if kind == "ddpm":
        want = ((s * z - eps) ** 2).mean()
    else:
        want = ((a * eps - s * x0.double().numpy()) ** 2).mean()
    assert math.isclose(loss.item(), want, rel_tol=1e-4)
    # The levels follow flow matching's: median t ≈ 0.5, all inside the schedule's range.
    _, tau, tt = obj.sample_levels(20000, torch.Generator().manual_seed(2), x0)
    # τ is the model time the samplers feed the network at the same flow time
    torch.testing.assert_close(tau, obj.model_time(tt).float())
    assert abs(tt.median().item() - 0.5) < 0.02
    t_first, t_last = obj.time_of_step(torch.tensor([0, 999])).tolist()
    assert tt.min() >= t_first and tt.max() <= t_last
    with pytest.raises(ConfigError, match="step_dist 'x'; choose one of: uniform, logit_normal"):
        P.make_objective(kind, step_dist="x")


def test_logit_normal_with_velocity_weighting_is_the_flow_loss():
    """step_dist=logit_normal with weighting=velocity:G (study 13's eps-skip-ln-v arm): each
    example's ε-loss is weighted by min(1/(1 − t)², G) at its own flow time t (re-drawn here)."""
    obj = P.make_objective("ddpm", step_dist="logit_normal", weighting="velocity:4")
    x0 = torch.randn(256, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    model = lambda x, tau, cond=None: torch.zeros_like(x)  # noqa: E731  F = 0 (skip: ε̂ = √(1−ᾱ)·z)
    loss = obj.loss(model, x0, None, torch.Generator().manual_seed(5))
    gen = torch.Generator().manual_seed(5)
    t = 1 / (1 + np.exp(-torch.randn(256, generator=gen, dtype=torch.float64).numpy()))
    eps = torch.randn(x0.shape, generator=gen).double().numpy()
    ab = ((1 - t) ** 2 / ((1 - t) ** 2 + t**2))[:, None, None, None]
    z = np.sqrt(ab) * x0.double().numpy() + np.sqrt(1 - ab) * eps
    per = ((np.sqrt(1 - ab) * z - eps) ** 2).reshape(256, -1).mean(1)
    w = np.minimum(1 / (1 - t) ** 2, 4.0)
    assert (w == 4.0).any() and (w < 4.0).any()  # both sides of the cap are drawn
    assert math.isclose(loss.item(), (w * per).mean(), rel_tol=1e-4)


def test_step_dist_legacy_and_resume(tmp_path):
    """Records without ``step_dist`` read as uniform; a checkpoint resumed with another
    step_dist is refused in one line naming the setting."""
    from decentdiff.config import Config, ObjectiveConfig
    from decentdiff.training.generative import train_generative

    assert ObjectiveConfig.from_meta({"kind": "ddpm"}).step_dist == "uniform"
    images = np.random.default_rng(0).integers(0, 255, (8, 1, 8, 8), dtype=np.uint8)
    for kind in ("ddpm", "vpred"):
        cfg = Config()
        cfg.model.preset, cfg.objective.kind = "tiny", kind
        cfg.objective.step_dist = "uniform"
        cfg.train.steps, cfg.train.batch = 2, 4
        out = tmp_path / kind
        train_generative(out, images, None, 0, cfg, role="monolith", progress=False)
        cfg.train.steps, cfg.objective.step_dist = 4, "logit_normal"
        with pytest.raises(ConfigError, match=r"objective.step_dist=uniform, not logit_normal"):
            train_generative(out, images, None, 0, cfg, role="monolith", progress=False)


def test_auto_objective_settings_resolve_per_kind_and_are_recorded_resolved(tmp_path):
    """``auto`` (the default of objective.weighting and objective.step_dist) means: ddpm trains
    on the flow-matching loss (velocity:100 weighting, logit-normal noise levels; study 18), vpred
    on uniform integer steps, fm as before. What trains is what meta.json records -- never
    ``auto``, so a later change of a default does not change how a model reads -- and an explicit
    setting is kept."""
    import json

    from decentdiff.config import Config, ObjectiveConfig
    from decentdiff.training.generative import objective_from, train_generative

    assert (ObjectiveConfig().weighting, ObjectiveConfig().step_dist) == ("auto", "auto")
    want = {
        "ddpm": ("velocity:100", "logit_normal"),
        "vpred": ("uniform", "uniform"),
        "fm": ("uniform", "uniform"),
    }
    for kind, (weighting, step_dist) in want.items():
        r = ObjectiveConfig(kind=kind).resolved()
        assert (r.weighting, r.step_dist) == (weighting, step_dist)
    explicit = ObjectiveConfig(kind="ddpm", weighting="uniform", step_dist="uniform").resolved()
    assert (explicit.weighting, explicit.step_dist) == ("uniform", "uniform")
    obj = objective_from(ObjectiveConfig(kind="ddpm"))
    assert (obj.weight_cap, obj.step_dist) == (100.0, "logit_normal")
    assert objective_from(ObjectiveConfig(kind="vpred")).step_dist == "uniform"
    # A record from before either field existed: Ho et al.'s recipe, whatever today's default.
    old = ObjectiveConfig.from_meta({"kind": "ddpm", "eps_param": "direct"})
    assert (old.weighting, old.step_dist) == ("uniform", "uniform")

    images = np.random.default_rng(0).integers(0, 255, (8, 1, 8, 8), dtype=np.uint8)
    cfg = Config()
    cfg.model.preset, cfg.objective.kind = "tiny", "ddpm"
    cfg.train.steps, cfg.train.batch = 2, 4
    train_generative(tmp_path / "m", images, None, 0, cfg, role="monolith", progress=False)
    meta = json.loads((tmp_path / "m" / "meta.json").read_text())
    assert meta["objective"]["weighting"] == "velocity:100"
    assert meta["objective"]["step_dist"] == "logit_normal"
    # Resuming with the settings spelled out is the same run; with Ho et al.'s steps it is not.
    cfg.train.steps = 3
    cfg.objective.weighting, cfg.objective.step_dist = "velocity:100", "logit_normal"
    train_generative(tmp_path / "m", images, None, 0, cfg, role="monolith", progress=False)
    cfg.train.steps, cfg.objective.step_dist = 4, "uniform"
    with pytest.raises(ConfigError, match=r"objective.step_dist=logit_normal, not uniform"):
        train_generative(tmp_path / "m", images, None, 0, cfg, role="monolith", progress=False)
