"""Study 18 (issue 15): the ε-recipe of study 13's verdict arm as a candidate ddpm default. Does
an ε-model with the skip connection trained on the flow-matching loss -- logit-normal noise levels
(`objective.step_dist=logit_normal`) and the velocity weighting (`objective.weighting=velocity:100`,
under which the ε-MSE equals the flow-matching loss of the converted velocity) -- sample
deterministically as well as ancestrally, and better than the current default (study 17's arm)?

Set-up: study 11's (compact UNet, 1,000 steps at batch 64, mnist5k, 3 seeds, FID on 1,000 images,
the same five samplers), one arm. The default ε (eps-skip, study 17), v-prediction (study 15) and
flow-matching (study 11) arms are recorded numbers (same seeds and evaluation seeds).

    python experiments/s18_eps_flow_loss.py [run] [--worker I/N]
    python experiments/s18_eps_flow_loss.py report
"""

from __future__ import annotations

from sampler_arm import ArmStudy, recorded_arm, study11_arms

STUDY = "s18_eps_flow_loss"
CLAIM = (
    "Issue 15: a `--objective ddpm` model sampled with `--solver euler` in 20-50 steps has FID "
    "<= 1.3x its best ancestral sampling (mnist5k, 3 seeds) -- here the ε-model with a skip "
    "connection trained on flow matching's noise levels and weighting (study 13's verdict "
    "recipe), the candidate for the ddpm default."
)
ARM = ["--objective", "ddpm", "--set", "objective.eps_param=skip",
       "--set", "objective.step_dist=logit_normal", "--set", "objective.weighting=velocity:100"]  # fmt: skip
NAME = "eps-skip-ln-v"


def _others() -> dict[str, dict[str, dict[str, float]]]:
    return {"eps-skip": recorded_arm("s17_eps_skip", "eps-skip"),
            "vpred": recorded_arm("s15_vpred", "vpred"), "fm": study11_arms()["fm"]}  # fmt: skip


S = ArmStudy(STUDY, NAME, "s18", CLAIM, ARM, _others, "studies 11, 15 and 17, recorded")
run_dir, ev, work, report, main = S.run_dir, S.ev, S.work, S.report, S.main

if __name__ == "__main__":
    main()
