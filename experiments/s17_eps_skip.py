"""Study 17 (issue 15): the ε-model with a skip connection. Does a DDPM ε-model whose network
output F becomes ε̂ = √(1−ᾱ)·z + √ᾱ·F (`objective.eps_param=skip`, same ε-MSE loss) sample
deterministically as well as ancestrally?

Study 11 measured the cause of the gap: an ε error δ becomes an x̂0 error δ·√(1−ᾱ)/√ᾱ. The same
division turns a Jacobian ∂ε̂/∂z a few percent short of 1/√(1−ᾱ) (study 11's probe: t·∂ε̂/∂x =
0.95-1.00 at t ≥ 0.9) into an x̂0 that follows the noise in its input, (1 − √(1−ᾱ)·∂ε̂/∂z)/√ᾱ,
where the exact posterior's barely moves; the ODE carries that along, the ancestral sampler's
fresh noise washes it out. With the skip connection, x̂0 = √ᾱ·z − √(1−ᾱ)·F: nothing is divided
by √ᾱ.

Set-up: study 11's (compact UNet, 1,000 steps at batch 64, mnist5k, 3 seeds, FID on 1,000 images,
the same five samplers), one arm. The direct-ε, v-prediction and flow-matching arms are studies 11
and 15's recorded numbers (same seeds and evaluation seeds).

    python experiments/s17_eps_skip.py [run] [--worker I/N]
    python experiments/s17_eps_skip.py report
"""

from __future__ import annotations

from sampler_arm import ArmStudy, recorded_arm, study11_arms

STUDY = "s17_eps_skip"
CLAIM = (
    "Issue 15: a default `--objective ddpm` model sampled with `--solver euler` in 20-50 steps has "
    "FID <= 1.3x its best ancestral sampling (mnist5k, 3 seeds) -- here the ε-model with a skip "
    "connection, trained with the same ε-loss."
)
# Pinned as recorded: the default of `--objective ddpm` since study 18 trains differently.
ARM = ["--objective", "ddpm", "--set", "objective.eps_param=skip",
       "--set", "objective.weighting=uniform", "--set", "objective.step_dist=uniform"]  # fmt: skip
NAME = "eps-skip"


def _others() -> dict[str, dict[str, dict[str, float]]]:
    s11 = study11_arms()
    return {"eps-uniform": s11["eps-uniform"], "vpred": recorded_arm("s15_vpred", "vpred"),
            "fm": s11["fm"]}  # fmt: skip


S = ArmStudy(STUDY, NAME, "s17", CLAIM, ARM, _others, "studies 11 and 15, recorded")
run_dir, ev, work, report, main = S.run_dir, S.ev, S.work, S.report, S.main

if __name__ == "__main__":
    main()
