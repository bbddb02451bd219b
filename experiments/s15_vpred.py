"""Study 15 (issue 15): v-prediction as a third objective. Does a DDPM-schedule model that
predicts v instead of ε sample deterministically as well as ancestrally?

Set-up: study 11's (compact UNet, 1,000 steps at batch 64, mnist5k, 3 seeds, FID on 1,000 images,
the same five samplers), one arm `--objective vpred`. The ε and flow-matching arms are study 11's
recorded numbers (docs/reproduction/s11_eps_sampling.json; same seeds and evaluation seeds).

    python experiments/s15_vpred.py [run] [--worker I/N]
    python experiments/s15_vpred.py report
"""

from __future__ import annotations

from sampler_arm import ArmStudy, study11_arms

STUDY = "s15_vpred"
CLAIM = (
    "Issue 15: a model on the DDPM schedule sampled with `--solver euler` in 20-50 steps has FID "
    "<= 1.3x its best ancestral sampling -- here with v-prediction (Salimans & Ho 2022), whose "
    "x0 estimate does not amplify the network's error near t = 1 as ε-prediction's does."
)
ARM = ["--objective", "vpred"]


def _others() -> dict[str, dict[str, dict[str, float]]]:
    s11 = study11_arms()
    return {arm: s11[arm] for arm in ("eps-uniform", "fm")}


S = ArmStudy(STUDY, "vpred", "s15", CLAIM, ARM, _others, "study 11, recorded")
run_dir, ev, work, report, main = S.run_dir, S.ev, S.work, S.report, S.main

if __name__ == "__main__":
    main()
