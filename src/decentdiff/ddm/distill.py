"""Distil the DDM ensemble into one dense student (McAllister et al. 2025, PAPERS.md §1).

The student has the experts' architecture and is trained by flow matching on the *teachers'*
velocities instead of ε − x0: loss = ||v_student(x_t, t) − v_teacher(x_t, t)||². The teacher:

- ``own`` (default, the paper's): the expert of the example's cluster (no router needed). Its
  target v_k(x_t) is the global velocity only in expectation over which cluster x_t came from.
- a per-step routing (``full``, ``top1``, ``topk:K``, ...): the ensemble's routed velocity
  Σ_k w_k(x_t)·v_k(x_t) with the router's weights — with ``full`` and a calibrated router, the
  global velocity itself, a lower-variance target at the cost of K expert forwards.
 x0 comes from the training part at its natural frequencies, t from the flow
objective's time distribution. The result is written to ``RUN/distilled/`` in the generative
checkpoint layout, so ``sample``/``eval``/``compare``/``report --model distilled`` load it like a
monolith.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from typing import Any

import torch
from torch import Tensor, nn

from ..config import Config
from ..errors import ConfigError, RunError
from ..evaluation.flops import forward_flops
from ..models.registry import build_network, config_from_dict
from ..run import Run
from ..training.generative import image_batches, load_generative, objective_from
from ..training.loop import resolve_device, train
from .experts import expert_metas
from .membership import member_data
from .store import expert_dir
from .warm import total_train_flops


def distill_batch(cfg: Config, batch: int | None) -> int:
    """The explicit ``--batch`` if given, else B/4 of the monolith's batch B (the paper's choice)."""
    return batch if batch is not None else max(1, cfg.train.batch // 4)


def distill(
    run: Run,
    cfg: Config,
    *,
    steps: int | None = None,
    batch: int | None = None,
    fresh: bool = False,
    progress: bool = True,
    teacher: str = "own",
    preset: str | None = None,
    arch: str = "",
    init: str = "random",
) -> dict[str, Any]:
    """Train ``RUN/distilled`` from the K experts of RUN.

    Args:
        run: a RUN with a partition and K trained experts (a router is not needed).
        cfg: resolved config; ``train`` gives lr, seed, ...; ``steps``/``batch`` override it.
        steps: total student steps (None = ``train.steps``).
        batch: student batch (None = ``train.batch`` / 4).
        fresh: start over instead of resuming.
        teacher: ``own`` or a per-step routing of the ensemble (see the module docstring).
        preset: the student's model size (None: the experts' architecture).
        arch: the student's backbone for a plain size name (``dit`` + ``small`` = ``dit-small``).
        init: the student's starting weights (:func:`check_init`): ``random``, ``soup`` (the
            experts' EMA weights averaged by cluster size) or ``expert:K`` (expert K's).

    Returns:
        The student's meta.json. ``train_flops`` counts the student's forward+backward *and* the
        teachers' forward passes of every step (all measured by the FLOP counter);
        ``teacher_flops_per_step`` is the teachers' share, ``teachers_train_flops`` what the
        experts themselves cost to train.
    """
    check_teacher(teacher)  # before anything is loaded
    if (k := check_init(init)) is not None:
        init = f"expert:{k}"  # as recorded: expert:07 resumes expert:7
    if arch and preset is None:
        raise ConfigError(
            "--arch needs --preset for the student (e.g. --arch dit --preset small); without "
            "both the student takes the experts' architecture"
        )
    if preset is not None:
        from ..models.registry import network_config

        network_config(preset, 1, 0, arch)  # an unknown preset fails here, with the choices
    out = run.model_dir("distilled")
    if not fresh and (out / "meta.json").is_file():
        try:
            before = json.loads((out / "meta.json").read_text()).get("teacher", "own")
        except (OSError, ValueError):
            before = teacher  # a damaged meta is the training loop's to report
        if before != teacher:
            raise RunError(
                f"{out} was distilled with --teacher {before}; resume with --teacher {before}, "
                f"or pass --fresh to start a student taught by {teacher}"
            )
        try:
            began = json.loads((out / "meta.json").read_text()).get("init", "random")
        except (OSError, ValueError):
            began = init
        if began != init:
            raise RunError(
                f"{out} was started with --init {began}; resume with --init {began}, or pass "
                f"--fresh to start a student from {init}"
            )
    # Every current member (withdrawn rows left out, added sources in) with its cluster.
    images, labels, clusters, rec = member_data(run, cfg)
    data_fp = run.read_toml().get("data", {}).get("fingerprint")
    source = run.read_toml().get("data", {}).get("source")
    metas = expert_metas(run, rec.num_parts, rec.partition_id)
    init = check_init_metas(init, metas)  # before the experts are loaded
    device = resolve_device(cfg.train.device)
    teachers: list[nn.Module] = []
    unets = []
    for k in range(rec.num_parts):
        v, unet, _, _ = load_generative(expert_dir(run, k), device=device)
        for p in unet.parameters():
            p.requires_grad_(False)
        teachers.append(v)
        unets.append(unet)
    if preset is None and any(m["unet"] != metas[0]["unet"] for m in metas):
        raise RunError(
            "the experts of this RUN have different architectures; name the student's with "
            "--preset (e.g. --preset small or --preset dit-small)"
        )
    vaes = {json.dumps(m.get("vae", {}).get("fingerprint")) for m in metas}
    if len(vaes) > 1:
        raise RunError("the experts of this RUN were trained in different latent spaces (--vae)")
    from ..latent import model_inputs

    # The student learns in its teachers' latent space, which must still be the VAE on disk.
    vae_path = (metas[0].get("vae") or {}).get("path", "")
    images, vae_meta = model_inputs(
        images, vae_path, run.path / "latents", device, resumed=metas[0]
    )
    ucfg = config_from_dict(metas[0]["unet"])
    if preset is not None:
        ucfg = network_config(preset, ucfg.in_channels, ucfg.num_classes, arch)
    if init != "random":
        want = json.loads(json.dumps(ucfg.to_dict()))
        chosen = metas if init == "soup" else [metas[int(init[7:])]]
        if any(m["unet"] != want for m in chosen):
            raise ConfigError(
                f"--init {init}: the student's architecture is not "
                f"{'every expert' if init == 'soup' else 'the expert'}'s; name the expert's "
                "--preset/--arch (or drop them), use --init expert:K with an expert of the "
                "student's architecture, or --init random"
            )
    if not fresh and (out / "meta.json").is_file():
        try:
            before = json.loads((out / "meta.json").read_text()).get("unet")
        except (OSError, ValueError):
            before = None  # a damaged meta is the training loop's to report
        if before is not None and before != json.loads(json.dumps(ucfg.to_dict())):
            raise RunError(
                f"{out} holds a student of another size; resume with the --preset it was "
                "distilled with, or pass --fresh to start this one"
            )
    n_cls = ucfg.num_classes
    routed = None if teacher == "own" else _routed_teacher(run, teacher, device)
    # The student is a flow-matching model whatever its teachers were (ε-teachers are converted).
    obj_cfg = replace(cfg.objective, kind="fm", weighting="uniform").resolved()
    objective = objective_from(obj_cfg)
    tcfg = replace(
        cfg.train,
        steps=steps if steps is not None else cfg.train.steps,
        batch=distill_batch(cfg, batch),
    )
    torch.manual_seed(tcfg.seed)  # parameter initialisation only
    student = build_network(ucfg).to(device)
    if init != "random":
        student.load_state_dict(initial_weights(init, unets, metas, student))
        student.to(device)
    parts = torch.from_numpy(clusters)
    draw = image_batches(images, labels, tcfg.batch, device, tcfg.cond_drop, n_cls)

    teacher_velocity = make_teacher(teachers, routed)

    def loss_fn(m: nn.Module, g: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        x0, cond, idx = draw(g)
        t = objective.sample_t(x0.shape[0], g).to(device)
        eps = torch.randn(x0.shape, generator=g).to(device)
        x_t = objective.noisy(x0, t, eps)
        target = teacher_velocity(x_t, t, cond, parts[idx].to(device))
        loss = (m(x_t, t, cond) - target).pow(2).mean()
        return loss, {}

    # The teachers' forward cost per step, measured on one batch (the training loop's counter
    # measures the whole loss_fn, teachers included; this is their share, for the report).
    x = torch.zeros(tcfg.batch, *images.shape[1:], device=device)
    t = torch.full((tcfg.batch,), 0.5, device=device)
    c = torch.zeros(tcfg.batch, dtype=torch.long, device=device) if n_cls else None
    teacher_net = routed if routed is not None else unets[0]
    teacher_fps = forward_flops(teacher_net, (x, t, c) if c is not None else (x, t))

    meta = {
        "kind": "generative",
        "unet": ucfg.to_dict(),
        "objective": asdict(obj_cfg),
        "model": asdict(cfg.model),
        "image_shape": list(images.shape[1:]),
        "num_images": len(images),
        **({"vae": vae_meta} if vae_meta else {}),
        "distilled_from": rec.partition_id,
        "num_parts": rec.num_parts,
        "data_fingerprint": data_fp,
        "source": source,
        "teacher": teacher,
        "init": init,
        "teacher_flops_per_step": teacher_fps,
        "teachers_train_flops": total_train_flops(metas),  # a shared warm-up counted once
    }
    return train(
        student,
        loss_fn,
        out,
        tcfg,
        meta=meta,
        metrics_path=out / "metrics.jsonl",
        role="distilled",
        fresh=fresh,
        progress=progress,
    )


def make_teacher(teachers: list[nn.Module], routed: nn.Module | None = None):
    """The distillation target ``(x_t, t, cond, who) -> v`` (no gradient): the routed ensemble's
    velocity if ``routed`` is given, else each example's own cluster expert ``teachers[who]``."""

    @torch.no_grad()
    def velocity(x_t: Tensor, t: Tensor, cond: Tensor | None, who: Tensor) -> Tensor:
        if routed is not None:
            return routed(x_t, t, cond)
        v = torch.empty_like(x_t)
        for k in who.unique().tolist():
            m = who == k
            v[m] = teachers[k](x_t[m], t[m], None if cond is None else cond[m])
        return v

    return velocity


#: --init's choices, as the help and the errors name them.
INITS = "random, soup (the experts' weights averaged by cluster size) or expert:K"


def check_init(init: str) -> int | None:
    """``random``, ``soup`` or ``expert:K`` (returns K); anything else is one line naming --init."""
    if init in ("random", "soup"):
        return None
    if init.startswith("expert:") and init[7:].isdigit():
        return int(init[7:])
    raise ConfigError(f"unknown --init {init!r}; use {INITS}")


def check_init_metas(init: str, metas: list[dict[str, Any]]) -> str:
    """--init against the experts' records; returns it normalised (``expert:07`` -> ``expert:7``).

    The student is a flow-matching network: only flow-matching experts are velocity networks
    whose weights can start it. A soup also needs experts that started from the same weights
    (the same ``train.seed``) and known shard sizes."""
    k = check_init(init)
    if init == "random":
        return init
    if k is not None:
        if not 0 <= k < len(metas):
            raise ConfigError(f"--init {init}: this RUN has experts 0..{len(metas) - 1}")
        init = f"expert:{k}"
    chosen = metas if k is None else [metas[k]]
    kinds = {str((m.get("objective") or {}).get("kind", "fm")) for m in chosen}
    if kinds != {"fm"}:
        raise ConfigError(
            f"--init {init}: the student is a flow-matching network and "
            f"{'some experts are' if k is None else 'this expert is'} "
            f"{', '.join(sorted(kinds - {'fm'}))}; use --init expert:K with a flow-matching "
            "expert, or --init random"
        )
    if k is None:
        seeds = {(m.get("train") or {}).get("seed") for m in metas}
        if len(seeds) != 1:
            raise ConfigError(
                "--init soup: the experts started from different seeds, so their average is "
                "not a working network; use --init expert:K or --init random"
            )
        if any(not isinstance(m.get("shard_size"), int) for m in metas):
            raise ConfigError(
                "--init soup: an expert's meta.json lacks its shard size; retrain it, or use "
                "--init expert:K"
            )
    return init


def initial_weights(
    init: str, unets: list[nn.Module], metas: list[dict[str, Any]], student: nn.Module
) -> dict[str, Tensor]:
    """The student's starting state dict (on the CPU): expert K's EMA weights, or the average of
    all experts' weighted by their shard sizes (a "soup": experts of one seed start from the same
    weights, ``train.seed``, and stay close enough that the average is a working network, if a
    poor one: FID 53 against 31-33 for single experts on their own clusters, one probe). The
    caller has checked kinds, seeds and architectures (:func:`check_init_metas`); a shape that
    still differs is refused here."""
    k = check_init(init)
    chosen = unets if k is None else [unets[k]]
    want = {n: p.shape for n, p in student.state_dict().items()}
    for net in chosen:
        if {n: p.shape for n, p in net.state_dict().items()} != want:
            raise ConfigError(
                f"--init {init}: the experts' architecture is not the student's; use --init random"
            )
    if k is not None:
        return {n: p.detach().cpu().clone() for n, p in unets[k].state_dict().items()}
    sizes = [float(m["shard_size"]) for m in metas]
    w = [x / sum(sizes) for x in sizes]
    states = [{n: p.detach().cpu() for n, p in net.state_dict().items()} for net in unets]
    out = {}
    for n, p in states[0].items():
        if p.is_floating_point():  # averaged in float64 on the CPU (MPS has no float64)
            out[n] = sum(wi * s[n].double() for wi, s in zip(w, states, strict=True)).to(p.dtype)
        else:  # integer buffers (counters) are not averaged
            out[n] = p.clone()
    return out


def check_teacher(teacher: str) -> None:
    """``own`` or a deterministic per-step routing; anything else is one line naming --teacher."""
    from ..errors import ConfigError
    from .routing import parse_routing

    if teacher == "own":
        return
    why = (
        "use own (each example's cluster expert) or a deterministic per-step routing of the "
        "ensemble: full, top1, topk:K, threshold:P"
    )
    try:
        spec = parse_routing(teacher)
    except ConfigError:
        raise ConfigError(f"unknown --teacher {teacher!r}; {why}") from None
    if spec.needs_prior or spec.kind == "oracle" or spec.stochastic:
        raise ConfigError(
            f"--teacher {teacher}: a teacher must give each noisy example the same velocity "
            f"every time (resume is exact); {why}"
        )


def _routed_teacher(run: Run, teacher: str, device: torch.device) -> nn.Module:
    """The ensemble under a per-step routing, as a frozen velocity (the router is needed)."""
    from .load import load_ensemble

    check_teacher(teacher)
    ens, _, _, networks = load_ensemble(run, teacher, device=device)
    for net in networks.values():
        for p in net.parameters():
            p.requires_grad_(False)
    return ens
