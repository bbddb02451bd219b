"""``decentdiff fed``: federated training on Flower (simulation here, or a real deployment).

Heavy imports (flwr, torch) happen inside the commands so ``decentdiff --help`` stays fast.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Annotated

import typer

from ..errors import ConfigError
from ..federated.recipes import DEFAULT_RECIPE, RECIPES
from ..federated.settings import DEFAULTS
from .options import (
    AggregateOpt,
    AttackOpt,
    ClientsOpt,
    ConfigOpt,
    CopyThresholdOpt,
    DataOpt,
    DeviceOpt,
    DryRunOpt,
    EvalFeaturesOpt,
    EvalNOpt,
    FedBatchOpt,
    FedFreshOpt,
    FedObjectiveOpt,
    FedRunArg,
    FedRunNOpt,
    FedSeedOpt,
    FullRoundsOpt,
    GuidanceOpt,
    InsecureOpt,
    LogOpt,
    MemorisationOpt,
    NodeThreadsOpt,
    OldClientsOpt,
    OldEvalFeaturesOpt,
    OldEvalNOpt,
    OldSampleStepsOpt,
    PrecisionOpt,
    PresetOpt,
    QuantizeOpt,
    QuietOpt,
    RoundsOpt,
    RunArg,
    SampleSeedOpt,
    SampleStepsOpt,
    SetOpt,
    SiloDataOpt,
    SolverOpt,
    SuperlinkPortOpt,
    SupernodeOutOpt,
    SupernodePortOpt,
    TrainDeviceOpt,
    copy_threshold,
)
from .privacy_options import (
    DpAdaptiveOpt,
    DpClipOpt,
    DpCountStdOpt,
    DpDeltaOpt,
    DpOpt,
    NoiseMultiplierOpt,
    TargetEpsilonOpt,
)
from .secagg_options import (
    SecAggBitsOpt,
    SecAggClipOpt,
    SecAggMaxWeightOpt,
    SecAggOpt,
    SecAggSharesOpt,
    SecAggThresholdOpt,
)

fed_app = typer.Typer(
    no_args_is_help=True,
    help="Federated averaging of one UNet across data silos, on Flower (FULL, USPLIT, UDEC, "
    "ULATDEC; FedProx; 8-bit updates).",
)

METHOD_HELP = (
    "full (everything both ways), usplit (random pairs report encoder / decoder), udec (only the "
    "decoder travels), ulatdec (decoder + bottleneck)."
)
SERVER_OPT_HELP = (
    "Server optimiser over the clients' validated average (Flower's own strategies): fedavg (the "
    "average is the new model), fedavgm (server momentum, Hsu et al. 2019), fedadam, fedyogi, "
    "fedadagrad (Reddi et al. 2021: an adaptive step along average − model). Costs no bytes; "
    "with udec / ulatdec it moves only the shared parts."
)
SPLIT_HELP = (
    "iid, dirichlet:ALPHA (label skew), quantity:ALPHA (size skew), classes:N; or Flower's "
    "partitioners by their names and parameters: dirichlet:alpha=0.5,min_partition_size=10,"
    "self_balancing=true, pathological:num_classes_per_partition=2, "
    "shard:num_shards_per_partition=2 (docs/federated-splits.md)."
)
RECIPE_HELP = (
    " ".join(f"{r.name}: {r.summary}" for r in RECIPES.values())
    + " Options and --set given explicitly win. Measured: docs/federated.md (recipes) and docs/reproduction.md."
)


def _flwr_env() -> None:
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")


@fed_app.command("run")
def fed_run(
    ctx: typer.Context,
    run: RunArg,
    data: DataOpt = None,
    clients: ClientsOpt = DEFAULTS.clients,
    split: Annotated[
        str, typer.Option("--split", help=f"Client split: {SPLIT_HELP}")
    ] = DEFAULTS.split,
    method: Annotated[str, typer.Option("--method", help=METHOD_HELP)] = DEFAULTS.method,
    rounds: RoundsOpt = DEFAULTS.rounds,
    local_epochs: Annotated[
        float,
        typer.Option(
            "--local-epochs", "-E", help="Local epochs E per round: ceil(E·n_i/batch) steps."
        ),
    ] = DEFAULTS.local_epochs,
    local_steps: Annotated[
        int, typer.Option("--local-steps", help="Fixed local steps per round (0: from E).")
    ] = DEFAULTS.local_steps,
    preset: PresetOpt = None,
    objective: FedObjectiveOpt = None,
    batch: FedBatchOpt = None,
    seed: FedSeedOpt = DEFAULTS.seed,
    prox: Annotated[
        float, typer.Option("--prox", help="FedProx μ: adds (μ/2)·||θ − θ_global||² (0 = off).")
    ] = DEFAULTS.prox,
    quantize: QuantizeOpt = DEFAULTS.quantize,
    client_state: Annotated[
        str,
        typer.Option(
            "--client-state",
            help="What a client keeps between rounds: reset = a new Adam every round (the "
            "paper); keep = Adam's moments carry over (kept on the node and in "
            "RUN/federated/clients/<i>/carry, so a resumed run continues exactly). A warm-up "
            "(--set train.warmup=N) always runs on the client's steps across rounds. "
            "[default: the recipe's: keep under pooled and central, reset under paper]",
            show_default=False,
        ),
    ] = DEFAULTS.client_state,
    full_rounds: FullRoundsOpt = DEFAULTS.full_rounds,
    server_opt: Annotated[str, typer.Option("--server-opt", help=SERVER_OPT_HELP)] = (
        DEFAULTS.server_opt
    ),
    server_lr: Annotated[
        float | None,
        typer.Option(
            "--server-lr",
            help="Server learning rate η of --server-opt (default: fedavg 1 (the only value it "
            "takes), fedavgm 1 − momentum, fedadam / fedyogi / fedadagrad 1e-3). An adaptive "
            "step needs η near the clients' own movement per round, about lr × local steps "
            "(docs/federated.md, server optimisers).",
        ),
    ] = DEFAULTS.server_lr,
    server_momentum: Annotated[
        float | None,
        typer.Option(
            "--server-momentum",
            help="FedAvgM's momentum β / FedAdam's and FedYogi's β1, in [0, 1) (default 0.9; "
            "fedavg and fedadagrad take none).",
        ),
    ] = DEFAULTS.server_momentum,
    server_beta2: Annotated[
        float | None,
        typer.Option(
            "--server-beta2",
            help="FedAdam's and FedYogi's second-moment decay β2, in (0, 1) (default: Flower's "
            "0.99; AdamW's is 0.999).",
        ),
    ] = DEFAULTS.server_beta2,
    server_tau: Annotated[
        float | None,
        typer.Option(
            "--server-tau",
            help="FedAdam's, FedYogi's and FedAdagrad's τ, Adam's ε: the step is "
            "η·m/(√v + τ) (default: Flower's 1e-3). Keep τ well below the size of a round's update "
            "per weight, or the step shrinks towards η·m/τ: FedSGD clients (one SGD step, "
            "--set train.optimizer=sgd) send lr x a gradient, often 1e-4 or less per weight.",
        ),
    ] = DEFAULTS.server_tau,
    server_ema: Annotated[
        float,
        typer.Option(
            "--server-ema",
            help="Decay β per round of an EMA of the global model kept on the server (0 = off; "
            "FULL, USPLIT): bias-corrected, so no weight stays on the initial model. Stored as "
            "the global checkpoint's ema weights, which sample / eval / fed eval use by default. "
            "[default: the recipe's: under pooled, central and fedsgd the β that keeps central "
            "training's EMA window; off under paper]",
            show_default=False,
        ),
    ] = DEFAULTS.server_ema,
    aggregate: AggregateOpt = DEFAULTS.aggregate,
    attack: AttackOpt = DEFAULTS.attack,
    dp: DpOpt = DEFAULTS.dp,
    dp_clip: DpClipOpt = DEFAULTS.dp_clip,
    noise_multiplier: NoiseMultiplierOpt = DEFAULTS.noise_multiplier,
    dp_adaptive: DpAdaptiveOpt = DEFAULTS.dp_adaptive,
    dp_delta: DpDeltaOpt = DEFAULTS.dp_delta,
    target_epsilon: TargetEpsilonOpt = DEFAULTS.target_epsilon,
    dp_count_std: DpCountStdOpt = DEFAULTS.dp_count_std,
    secagg: SecAggOpt = DEFAULTS.secagg,
    secagg_shares: SecAggSharesOpt = DEFAULTS.secagg_shares,
    secagg_threshold: SecAggThresholdOpt = DEFAULTS.secagg_threshold,
    secagg_clip: SecAggClipOpt = DEFAULTS.secagg_clip,
    secagg_bits: SecAggBitsOpt = DEFAULTS.secagg_bits,
    secagg_max_weight: SecAggMaxWeightOpt = DEFAULTS.secagg_max_weight,
    recipe: Annotated[str, typer.Option("--recipe", help=RECIPE_HELP)] = DEFAULT_RECIPE,
    min_replies: Annotated[
        int, typer.Option("--min-replies", help="Valid updates a round needs to complete.")
    ] = DEFAULTS.min_replies,
    round_timeout: Annotated[
        float,
        typer.Option("--round-timeout", help="Seconds to wait for a round's replies."),
    ] = DEFAULTS.round_timeout,
    parallel: Annotated[
        int, typer.Option("--parallel", help="Clients trained at once (0 = one per CPU core).")
    ] = 0,
    fresh: FedFreshOpt = False,
    flower_logs: Annotated[
        bool,
        typer.Option(
            "--flower-logs",
            help="Show Flower's and Ray's own log lines (warnings, the client actors' output) "
            "in the terminal. Off, they stay in Ray's session logs (/tmp/ray/session_latest/"
            "logs); each client's status and failure reason is in rounds.jsonl either way.",
        ),
    ] = False,
    n: FedRunNOpt = 500,
    sample_steps: SampleStepsOpt = None,
    solver: SolverOpt = None,
    guidance: GuidanceOpt = None,
    precision: PrecisionOpt = None,
    device: TrainDeviceOpt = None,
    quiet: QuietOpt = False,
    log: LogOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    old_clients: OldClientsOpt = None,
    old_eval_n: OldEvalNOpt = None,
) -> None:
    """Train one UNet by federated averaging with Flower's simulation engine (resumable)."""
    _flwr_env()
    from click.core import ParameterSource

    from ..federated.federate import federate, option_names

    def given(name: str) -> bool:  # explicitly, or by an old spelling
        source = ctx.get_parameter_source(name)
        return source not in (ParameterSource.DEFAULT, None) or (
            ctx.params[name] != getattr(DEFAULTS, name)
        )

    options = {k: ctx.params[k] for k in option_names() if k in ctx.params and given(k)}
    result = federate(
        run,
        recipe=recipe,
        n=n,
        parallel=parallel,
        fresh=fresh,
        progress=not quiet,
        flower_logs=flower_logs,
        config=config,
        sets=set_,
        data=data,
        preset=preset,
        objective=objective,
        batch=batch,
        log=log,
        device=device,
        precision=precision,
        sample_steps=sample_steps,
        solver=solver,
        guidance=guidance,
        **options,
    )
    for line in result.summary():
        typer.echo(line)


@fed_app.command("eval")
def fed_eval(
    run: FedRunArg,
    n: EvalNOpt = None,
    eval_features: EvalFeaturesOpt = "auto",
    sample_steps: SampleStepsOpt = None,
    solver: SolverOpt = None,
    guidance: GuidanceOpt = None,
    seed: SampleSeedOpt = None,
    precision: PrecisionOpt = None,
    memorisation: MemorisationOpt = False,
    copy_threshold_: CopyThresholdOpt = None,
    device: DeviceOpt = "auto",
    quiet: QuietOpt = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    old_steps: OldSampleStepsOpt = None,
    old_features: OldEvalFeaturesOpt = None,
) -> None:
    """FID of a federated run: its global model (FULL, USPLIT) or each client's personal model
    (UDEC, ULATDEC), with mean ± std, min and max over clients; rows go to RUN/metrics.jsonl.
    With --memorisation, also whether each model's images copy any client's training images."""
    from ..federated.federate import eval_lines, fed_eval

    summary = fed_eval(
        run,
        n=n,
        features=eval_features,
        device=device,
        memorisation=copy_threshold(memorisation, copy_threshold_),
        progress=not quiet,
        config=config,
        sets=set_,
        sample_steps=sample_steps,
        solver=solver,
        guidance=guidance,
        sample_seed=seed,
        sample_precision=precision,
    )
    for line in eval_lines(summary, run):
        typer.echo(line)


@fed_app.command("bytes")
def fed_bytes(
    preset: PresetOpt = None,
    clients: ClientsOpt = DEFAULTS.clients,
    rounds: RoundsOpt = DEFAULTS.rounds,
    quantize: QuantizeOpt = DEFAULTS.quantize,
    in_channels: Annotated[int, typer.Option("--in-channels", help="Image channels.")] = 1,
    num_classes: Annotated[
        int, typer.Option("--num-classes", help="Classes of a class-conditional UNet (0 = none).")
    ] = 0,
    seed: FedSeedOpt = DEFAULTS.seed,
    full_rounds: FullRoundsOpt = DEFAULTS.full_rounds,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object keyed by method.")
    ] = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    old_clients: OldClientsOpt = None,
) -> None:
    """Bytes each method sends (every client, every round, initial broadcast included), no training."""
    from .. import config as C
    from ..federated import aggregate as A
    from ..models.registry import build_network, network_config

    resolved = C.resolve(config, set_)
    preset = preset or resolved.model.preset

    if clients < 1 or rounds < 1:
        raise ConfigError("--clients and --rounds must be ≥ 1")
    if not 0 <= full_rounds <= rounds:
        raise ConfigError(f"--full-rounds must be in 0..--rounds ({rounds}), got {full_rounds}")
    if quantize not in (0, *A.QUANTIZE_BITS):
        raise ConfigError(f"--quantize must be 0 (off) or 8, got {quantize}")
    net = network_config(preset, in_channels, num_classes, resolved.model.arch)
    sd = build_network(net).state_dict()
    layout = A.layout_of({k: v.numpy() for k, v in sd.items()})
    table = A.bytes_table(
        layout, clients, rounds, bits=quantize or None, seed=seed, full_rounds=full_rounds
    )
    if as_json:
        out = {
            k: {f: v[f] for f in ("up", "down", "total", "ratio_to_full")} for k, v in table.items()
        }
        typer.echo(json.dumps(out))
        return
    params = sum(v.numel() for v in sd.values())
    q = f", {quantize}-bit updates" if quantize else ""
    typer.echo(f"{preset}: {params:,} parameters, {clients} clients, {rounds} rounds{q}")
    typer.echo(f"{'method':<8} {'up':>15} {'down':>15} {'total':>15} {'× full':>7}")
    for k, v in table.items():
        typer.echo(
            f"{k:<8} {v['up']:>15,} {v['down']:>15,} {v['total']:>15,} {v['ratio_to_full']:>7.3f}"
        )


def _exe(name: str) -> str:
    import sys

    found = shutil.which(name) or str(Path(sys.executable).with_name(name))
    if not Path(found).exists():
        raise ConfigError(f"{name} not found; install decentdiff with the [federated] extra")
    return found


def _tls_args(
    insecure: bool, certfile: Path | None, keyfile: Path | None, ca: Path | None
) -> list[str]:
    if insecure:
        return ["--insecure"]
    if not (certfile and keyfile):
        raise ConfigError(
            "TLS needs --ssl-certfile and --ssl-keyfile (and --ssl-ca-certfile); or pass "
            "--insecure on a trusted network only"
        )
    for p in (certfile, keyfile, ca):
        if p is not None and not p.is_file():
            raise ConfigError(f"{p} not found; pass an existing PEM file")
    args = ["--ssl-certfile", str(certfile), "--ssl-keyfile", str(keyfile)]
    return [*args, "--ssl-ca-certfile", str(ca)] if ca else args


@fed_app.command("superlink")
def fed_superlink(
    host: Annotated[str, typer.Option("--host", help="Interface to listen on.")] = "0.0.0.0",
    port: SuperlinkPortOpt = 8000,
    insecure: InsecureOpt = False,
    ssl_certfile: Annotated[
        Path | None, typer.Option("--ssl-certfile", help="Server certificate (PEM).")
    ] = None,
    ssl_keyfile: Annotated[
        Path | None, typer.Option("--ssl-keyfile", help="Server private key (PEM).")
    ] = None,
    ssl_ca_certfile: Annotated[
        Path | None, typer.Option("--ssl-ca-certfile", help="CA certificate (PEM).")
    ] = None,
    database: Annotated[
        Path | None, typer.Option("--database", help="State database file (default: in memory).")
    ] = None,
    simulation: Annotated[
        bool,
        typer.Option(
            "--simulation",
            help="Run apps on simulated SuperNodes (for `flwr run .` on this machine).",
        ),
    ] = False,
    node_auth: Annotated[
        bool,
        typer.Option(
            "--node-auth",
            help="Only admit SuperNodes whose public key was registered with `flwr supernode "
            "register` (Flower's --enable-supernode-auth; needs TLS).",
        ),
    ] = False,
    dry_run: DryRunOpt = False,
) -> None:
    """Start Flower's SuperLink (the server side of a real deployment); replaces this process."""
    _flwr_env()
    if node_auth and insecure:
        raise ConfigError("--node-auth needs TLS (--ssl-certfile, --ssl-keyfile), not --insecure")
    cmd = [
        _exe("flower-superlink"),
        *_tls_args(insecure, ssl_certfile, ssl_keyfile, ssl_ca_certfile),
    ]
    cmd += ["--host", host, "--port", str(port), "--disable-runtime-dependency-installation"]
    if database:
        cmd += ["--database", str(database)]
    if node_auth:
        cmd += ["--enable-supernode-auth"]
    if simulation:
        cmd += ["--simulation"]
    _exec(cmd, dry_run)


def _parse_partition(spec: str) -> tuple[int, int]:
    i, sep, n = spec.partition("/")
    try:
        pi, pn = int(i), int(n)
    except ValueError:
        raise ConfigError(f"--partition {spec!r}: expected i/N, e.g. 0/5") from None
    if not sep or pn < 1 or not 0 <= pi < pn:
        raise ConfigError(f"--partition {spec!r}: need 0 ≤ i < N, e.g. 0/5")
    return pi, pn


@fed_app.command("supernode")
def fed_supernode(
    superlink: Annotated[str, typer.Option("--superlink", help="SuperLink address HOST:PORT.")],
    data: SiloDataOpt,
    partition: Annotated[
        str,
        typer.Option(
            "--partition",
            help="i/N: this silo is client i of N; with N > 1 it keeps only its share of --data "
            "(by the run's --split), with 0/1 all of --data.",
        ),
    ] = "0/1",
    out: SupernodeOutOpt = None,
    port: SupernodePortOpt = 9094,
    threads: NodeThreadsOpt = 0,
    insecure: InsecureOpt = False,
    root_certificates: Annotated[
        Path | None,
        typer.Option("--root-certificates", help="CA certificate that signed the SuperLink's."),
    ] = None,
    auth_key: Annotated[
        Path | None,
        typer.Option(
            "--auth-key",
            help="This SuperNode's private EC key in OpenSSH format (`ssh-keygen -t ecdsa -b 384`); "
            "its .pub must be registered on the SuperLink with `flwr supernode register`.",
        ),
    ] = None,
    dry_run: DryRunOpt = False,
) -> None:
    """Start a Flower SuperNode for one data silo (reads only its own data); replaces this process."""
    _flwr_env()
    pi, pn = _parse_partition(partition)
    from ..data.sources import load_source

    load_source(data)  # a bad source fails here, in one line, not later inside Flower
    if auth_key is not None and insecure:
        raise ConfigError("--auth-key needs TLS (--root-certificates), not --insecure")
    if auth_key is not None and not auth_key.is_file():
        raise ConfigError(f"--auth-key {auth_key}: not found; pass the private key file")
    out_dir = (out or Path(f"fed-client-{pi}")).resolve()
    cmd = [_exe("flower-supernode")]
    if insecure:
        cmd.append("--insecure")
    elif root_certificates is None or not root_certificates.is_file():
        raise ConfigError(
            "TLS needs --root-certificates CA.pem (the CA that signed the SuperLink's "
            "certificate); or pass --insecure on a trusted network only"
        )
    else:
        cmd += ["--root-certificates", str(root_certificates)]
    if auth_key is not None:
        cmd += ["--auth-supernode-private-key", str(auth_key)]
    node_config = (
        f'partition-id={pi} num-partitions={pn} data="{data}" out-dir="{out_dir}" threads={threads}'
    )
    cmd += ["--superlink", superlink, "--port", str(port), "--node-config", node_config]
    _exec(cmd, dry_run)


def _exec(cmd: list[str], dry_run: bool) -> None:
    import shlex

    if dry_run:
        typer.echo(shlex.join(cmd))
        return
    os.execv(cmd[0], cmd)  # the Flower process takes this PID: stop it by that PID
