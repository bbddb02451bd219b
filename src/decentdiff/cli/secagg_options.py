"""``fed run``'s secure-aggregation options (Flower's SecAgg+; docs/federated.md, secure
aggregation). Kept apart from options.py, which is near the module size limit."""

from __future__ import annotations

from typing import Annotated

import typer

SecAggOpt = Annotated[
    bool,
    typer.Option(
        "--secagg",
        help="Secure aggregation with Flower's SecAgg+: the server gets only the clients' "
        "weighted average, never one update. full, udec, ulatdec with the plain average (any "
        "--server-opt); with --dp client at a fixed --dp-clip (each client clips its own "
        "update; ε accounts for SecAgg+'s rounding); refused with usplit, a robust "
        "--aggregate, --dp server, --dp-adaptive, --quantize and < 3 clients "
        "(docs/federated.md, secure aggregation).",
    ),
]
SecAggSharesOpt = Annotated[
    int,
    typer.Option(
        "--secagg-shares",
        help="Shares each client's secret is split into among its neighbours (3..clients; "
        "0 = every client).",
    ),
]
SecAggThresholdOpt = Annotated[
    int,
    typer.Option(
        "--secagg-threshold",
        help="Shares needed to reconstruct a secret (2..shares-1; 0 = a majority): more "
        "resists more colluders, fewer tolerates more dropouts.",
    ),
]
SecAggClipOpt = Annotated[
    float,
    typer.Option(
        "--secagg-clip",
        help="c: each weighted value (n_i/W)·θ is clipped to [-c, c] before quantisation "
        "(with --dp the clipped update Δ, so c = --dp-clip is enough and rounds finest).",
    ),
]
SecAggBitsOpt = Annotated[
    int,
    typer.Option(
        "--secagg-bits",
        help="2^bits quantisation levels over [-c, c] (clients·2^bits < 2^32); the error "
        "per weight is below clients·(2c + spread/2)/(2^bits·Σ n_i/W), spread being the "
        "largest distance of a client's value from the plain mean (federated/secagg.py "
        "error_bound).",
    ),
]
SecAggMaxWeightOpt = Annotated[
    float,
    typer.Option(
        "--secagg-max-weight",
        help="W: no client may have more training images than this (refused before any "
        "round); the closer to the largest client, the smaller the quantisation error. "
        "With --dp every weight is 1 and W is 1.",
    ),
]
