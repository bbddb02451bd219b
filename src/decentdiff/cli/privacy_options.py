"""``fed run``'s differential-privacy options (client-level DP; docs/federated.md, differential
privacy). Kept apart from options.py, which is near the module size limit."""

from __future__ import annotations

from typing import Annotated

import typer

DpOpt = Annotated[
    str,
    typer.Option(
        "--dp",
        help="Client-level differential privacy: off; server (the server clips each client's "
        "update to --dp-clip, averages them alike and adds Gaussian noise of std σ·C/n per "
        "weight); client (the clients clip before sending, the server adds the noise; the "
        "one that combines with --secagg). Every method; not with a robust --aggregate. "
        "(ε, δ) per round in rounds.jsonl "
        "(docs/federated.md, differential privacy).",
    ),
]
DpClipOpt = Annotated[
    float,
    typer.Option(
        "--dp-clip",
        help="C, the L2 norm each client's update (all the groups it reports) is clipped to; "
        "required with --dp (the initial C with --dp-adaptive). rounds.jsonl's dp.norms show "
        "the updates' norms.",
    ),
]
NoiseMultiplierOpt = Annotated[
    float,
    typer.Option(
        "--noise-multiplier",
        help="σ: the noise's std over C on the clients' sum (must be > 0 with --dp, unless "
        "--target-epsilon picks it). ε grows as √rounds/σ.",
    ),
]
DpAdaptiveOpt = Annotated[
    bool,
    typer.Option(
        "--dp-adaptive",
        help="Adaptive clipping (Andrew et al. 2021): C follows the median update norm, moved "
        "each round by a noisy count of the unclipped updates, paid for within σ.",
    ),
]
DpDeltaOpt = Annotated[
    float,
    typer.Option(
        "--dp-delta",
        help="δ that ε is reported at; must be below 1/clients (default 1e-5).",
    ),
]
TargetEpsilonOpt = Annotated[
    float,
    typer.Option(
        "--target-epsilon",
        help="ε the run must stay within at --dp-delta after --rounds: picks σ (exact "
        "accountant), or with --noise-multiplier refuses rounds it cannot meet (0 = none).",
    ),
]
DpCountStdOpt = Annotated[
    float,
    typer.Option(
        "--dp-count-std",
        help="--dp-adaptive: noise σ_b on the count of unclipped updates (0 = clients/20, "
        "Flower's default); needs σ_b > σ/2.",
    ),
]
