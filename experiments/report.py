"""Write docs/reproduction.md (and its figures) from the studies' results in docs/reproduction/."""

from __future__ import annotations

import json
import sys

from common import REPO, RESULTS
from studies import AREAS, STUDIES, Study, in_area

DOC = RESULTS.parent / "reproduction.md"  # docs/reproduction.md beside docs/reproduction/*.json
FIGS = RESULTS.parent / "figures"


def _relative(cmd: str) -> str:
    """A logged command (or a set-up's JSON) with this checkout's, another checkout's or a
    DECENTDIFF_REPRO clone's absolute paths written as the repository-relative ones a reader
    types: the doc is the same whichever checkout writes it."""
    import re

    return re.sub(r"/\S*?/(runs/repro/)", r"\1", cmd.replace(str(REPO) + "/", ""))


def f2(x) -> str:
    return "–" if x is None else f"{x:.2f}"


def ms(s: dict) -> str:
    """mean ± std (min–max) of a summary."""
    if s.get("count") == 1 or s.get("min") == s.get("max"):
        return f2(s["mean"])
    return f"{s['mean']:.2f} ± {s['std']:.2f} ({s['min']:.2f}–{s['max']:.2f})"


def mb(b) -> str:
    return f"{b / 1e6:.1f} MB"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def body_s1(r: dict) -> list[str]:
    seeds = r["setup"]["seeds"]
    out = [
        "| seed | monolith FID | K=4 top-1 FID | K=8 top-1 FID | K=4 / mono | K=8 / mono |",
        "|---|---|---|---|---|---|",
    ]
    for i, s in enumerate(seeds):
        row = r["per_seed"][str(s)]
        m = row["monolith"]["fid"]
        out.append(
            f"| {s} | {f2(m)} | {f2(row['K4_top1']['fid'])} | {f2(row['K8_top1']['fid'])} "
            f"| {r['K4']['ratios'][i]:.3f} | {r['K8']['ratios'][i]:.3f} |"
        )
    out += [
        "",
        f"FID mean ± std (min–max) over {len(seeds)} seeds: monolith {ms(r['monolith']['fid'])}; "
        f"K=4 {ms(r['K4']['fid'])}; K=8 {ms(r['K8']['fid'])}. Ratio to the monolith: K=4 "
        f"{ms(r['K4']['ratio_to_monolith'])} ({r['verdicts']['K4']}), K=8 "
        f"{ms(r['K8']['ratio_to_monolith'])} ({r['verdicts']['K8']}); paper 0.72. Training FLOPs "
        f"of the experts / the monolith's: K=4 {r['K4']['train_flops_vs_monolith']:.3f}, K=8 "
        f"{r['K8']['train_flops_vs_monolith']:.3f} (the ensemble's include the router's: the excess over 1).",
        "",
        "![s1](figures/repro_s1.png)",
    ]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    w = 0.27
    for j, (key, label) in enumerate(
        (("monolith", "monolith"), ("K4_top1", "DDM K=4"), ("K8_top1", "DDM K=8"))
    ):
        ax.bar(
            [i + (j - 1) * w for i in range(len(seeds))],
            [r["per_seed"][str(s)][key]["fid"] for s in seeds],
            w,
            label=label,
        )
    ax.set_xticks(range(len(seeds)), [f"seed {s}" for s in seeds])
    ax.set_ylabel("FID (classifier features)")
    ax.set_title("DDM (top-1) vs FLOP-matched monolith")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(FIGS / "repro_s1.png", dpi=110)
    plt.close(fig)
    return out


def _table(
    table: dict, cols=("fid", "precision", "recall", "sample_gflops_per_image")
) -> list[str]:
    out = [
        "| model / routing | FID | precision | recall | GFLOPs per image |",
        "|---|---|---|---|---|",
    ]
    for name, row in table.items():
        out.append("| " + name + " | " + " | ".join(f2(row.get(c)) for c in cols) + " |")
    return out


def body_s2(r: dict) -> list[str]:
    t = r["table"]
    out = [
        *_table(t),
        "",
        f"Best non-oracle routing: **{r['best_non_oracle']}**. Checks: "
        + ", ".join(f"{k}: {v}" for k, v in r["checks"].items())
        + ".",
        "",
        "![s2](figures/repro_s2.png)",
    ]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for name, row in t.items():
        ax.scatter(row["sample_gflops_per_image"], row["fid"], s=18)
        ax.annotate(name, (row["sample_gflops_per_image"], row["fid"]), fontsize=7)
    ax.set_xlabel("GFLOPs per image")
    ax.set_ylabel("FID")
    ax.set_title("Routing strategies, K=8")
    fig.tight_layout()
    fig.savefig(FIGS / "repro_s2.png", dpi=110)
    plt.close(fig)
    return out


def body_table_checks(r: dict) -> list[str]:
    return [
        *_table(r["table"]),
        "",
        "Checks: " + ", ".join(f"{k}: {v}" for k, v in r["checks"].items()) + ".",
    ]


def body_s4(r: dict) -> list[str]:
    out = [
        "| seed | distilled FID | monolith FID | ensemble top-1 FID | distilled / monolith |",
        "|---|---|---|---|---|",
    ]
    for i, (s, row) in enumerate(r["per_seed"].items()):
        out.append(
            f"| {s} | {f2(row['distilled']['fid'])} | {f2(row['monolith']['fid'])} | "
            f"{f2(row['ensemble_top1']['fid'])} | {r['ratios'][i]:.3f} |"
        )
    out += [
        "",
        f"Distilled / monolith FID: {ms(r['ratio_to_monolith'])} (paper: 7.76 / 7.82 = "
        f"0.99). Student batch {r['setup']['student_batch']} vs the monolith's "
        f"{r['setup']['batch']}, {r['setup']['student_steps']} steps each; the student's "
        f"training FLOPs (teacher forwards included) / the monolith's: "
        f"{r['student_train_flops_vs_monolith']:.3f}.",
    ]
    return out


def body_s5(r: dict) -> list[str]:
    names = [k for k in r["per_seed"][next(iter(r["per_seed"]))]]
    out = ["| ensemble | FID mean ± std (min–max) |", "|---|---|"]
    out += [f"| {k} | {ms(r[k])} |" for k in names]
    out += [
        "",
        "Heterogeneous / homogeneous top-1 FID per seed: "
        + ", ".join(f"{x:.3f}" for x in r["ratios"])
        + ". Checks: "
        + ", ".join(f"{k}: {v}" for k, v in r["checks"].items())
        + ".",
    ]
    d = r.get("longer_eps_experts")
    if d:
        out += [
            "",
            f"Diagnostic (seed {d['seed']}, no verdict): the two epsilon-experts trained "
            f"{d['eps_expert_steps']} steps instead of {d['flow_expert_steps']} (the flow experts "
            f"unchanged): heterogeneous top-1 FID {f2(d['heterogeneous top1']['fid'])}, top-2 "
            f"{f2(d['heterogeneous topk:2']['fid'])}."
            + (
                f" The 300-step ensembles sampled by the ancestral DDPM sampler (top-1): "
                f"homogeneous {f2(d['homogeneous top1, ancestral']['fid'])}, heterogeneous "
                f"{f2(d['heterogeneous top1, ancestral']['fid'])}."
                if "heterogeneous top1, ancestral" in d
                else ""
            ),
        ]
    return out


def body_s6(r: dict) -> list[str]:
    g = r["grid"]
    out = [
        f"Centralised baseline (same compute, same objective): FID {f2(r['central']['fid'])}."
        + (
            f" The same with the paper's objective, DDPM ε (for reference): FID "
            f"{f2(r['central_ddpm_reference']['fid'])} sampled by the ODE (Euler), "
            f"{f2((r.get('central_ddpm_reference_ancestral') or {}).get('fid'))} by the ancestral "
            f"DDPM sampler (`--solver ddpm`), 20 steps each."
            if r.get("central_ddpm_reference")
            else ""
        )
        + (
            f" A centralised run with as many steps as the federation's global model takes in "
            f"sequence ({r['setup']['central_sequential_steps']}): FID "
            f"{f2(r['central_sequential']['fid'])}. FedAvg FULL (IID) / centralised: "
            f"{r['fedavg_iid_vs_central']:.2f} at the same compute, "
            f"{r['fedavg_iid_vs_central_sequential']:.2f} at the same sequential steps."
            if r.get("central_sequential")
            else ""
        ),
        "",
        "| split | method | FID (per-client mean ± std (min–max) for UDEC/ULATDEC) | bytes | "
        "client sizes |",
        "|---|---|---|---|---|",
    ]
    for split, methods in g.items():
        for m, row in methods.items():
            out.append(
                f"| {split} | {m} | {ms(row['fid'])} | {mb(row['bytes_total'])} | "
                f"{row['client_sizes']} |"
            )
    out += [
        "",
        "Bytes saved vs FULL (IID): "
        + ", ".join(f"{m} {100 * v:.1f}%" for m, v in r["bytes_saved_vs_full"].items())
        + " (paper's count: "
        "USPLIT ~25%, ULATDEC ~41%, UDEC ~73.5%). Checks: "
        + ", ".join(f"{k}: {v}" for k, v in r["checks"].items())
        + ".",
        "",
        "![s6](figures/repro_s6.png)",
    ]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    marks = {"iid": "o", "quantity:0.5": "s", "dirichlet:0.5": "^"}
    for split, methods in g.items():
        for m, row in methods.items():
            ax.scatter(
                row["bytes_total"] / 1e6,
                row["fid"]["mean"],
                marker=marks.get(split, "o"),
                s=22,
                label=f"{m} {split}",
            )
    ax.axhline(r["central"]["fid"], color="gray", ls="--", lw=1)
    ax.set_xlabel("bytes on the wire (MB, all rounds)")
    ax.set_ylabel("FID (mean over models)")
    ax.set_title("Federated: quality vs communication (dashed: centralised)")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(FIGS / "repro_s6.png", dpi=110)
    plt.close(fig)
    return out


def body_s7(r: dict) -> list[str]:
    rows = [
        ("vanilla, iid", r["vanilla_iid"]),
        ("8-bit, iid", r["q8_iid"]),
        ("vanilla, dirichlet:0.5", r["vanilla_dirichlet0.5"]),
        (f"FedProx μ={r['setup']['prox_mu']}, dirichlet:0.5", r["prox_dirichlet0.5"]),
    ]
    out = ["| FULL | FID | uplink | total bytes |", "|---|---|---|---|"]
    out += [
        f"| {n} | {ms(x['fid'])} | {mb(x['bytes_up'])} | {mb(x['bytes_total'])} |" for n, x in rows
    ]
    out += [
        "",
        f"8-bit / vanilla: FID {r['q8_fid_ratio']:.3f}, uplink bytes "
        f"{r['q8_uplink_bytes_ratio']:.3f}, all bytes {r['q8_total_bytes_ratio']:.3f} (the "
        f"downlink stays full precision). FedProx / vanilla FID under label skew: "
        f"{r['prox_fid_ratio']:.3f}. Checks: "
        + ", ".join(f"{k}: {v}" for k, v in r["checks"].items())
        + ".",
    ]
    return out


def body_s8(r: dict) -> list[str]:
    out = []
    budgets = r.get("budgets") or {"one budget": r["arms"]}  # (older results: one budget)
    for label, arms in budgets.items():
        out += [
            f"**{label}**",
            "",
            "| arm | FID | bytes during training | training wall time here |",
            "|---|---|---|---|",
        ]
        for name, a in arms.items():
            extra = (
                f" (+ {mb(a['one_time_bytes'])} once, to ship the models)"
                if a.get("one_time_bytes")
                else ""
            )
            if a.get("rounds"):
                extra += f" over {a['rounds']} rounds"
            out.append(
                f"| {name} | {f2(a['fid'])} | {mb(a['train_bytes'])}{extra} | {a['wall_s']:.0f} s |"
            )
        out.append("")
    out += [
        "Checks: " + ", ".join(f"{k}: {v}" for k, v in r["checks"].items()) + ".",
        "The DDM wall time is one island after another on this machine; islands on separate "
        "machines would take a quarter of it. The federation's rounds are synchronous.",
    ]
    return out


def _ci(c: dict) -> str:
    lo, hi = c["ratio_t95"]
    return f"{c['ratio']['mean']:.2f} [{lo:.2f}, {hi:.2f}]"


def _boots(c: dict) -> str:
    out = []
    for p in c["per_seed"]:
        b = p.get("ratio_ci95")
        out.append(f"{p['ratio']:.2f}" + (f" ({b[0]:.2f}–{b[1]:.2f})" if b else ""))
    return "; ".join(out)


def body_s10(r: dict) -> list[str]:
    cells = r["cells"]
    budgets = r["setup"]["budgets"]
    out = [
        "Ratio = ensemble FID / FLOP-matched monolith FID (same seed; < 1: the ensemble wins). "
        "Mean over seeds with a 95% t-interval; per seed the ratio and its bootstrap 95% interval "
        "(1,000 generated and 1,000 held-out images resampled).",
        "",
    ]
    groups: dict[str, list[dict]] = {}
    for c in cells.values():
        g = c.get("group") or f"{c['budget']}{'-cc' if c['class_cond'] else ''}"
        groups.setdefault(g, []).append(c)
    for g in sorted(groups, key=lambda x: ("-cc" in x, x.count("-g"), budgets[x.split("-")[0]])):
        cs = groups[g]
        steps = budgets[g.split("-")[0]]
        mono = cs[0]["monolith_fid"]
        kind = "class-conditional, " if "-cc" in g else "unconditional, "
        guided = f", guidance {cs[0]['guidance']:g}" if cs[0].get("guidance", 1.0) != 1.0 else ""
        seeds = max(len(c["per_seed"]) for c in cs)
        out += [
            f"**{kind}{steps} steps{guided}, {seeds} seed{'s' if seeds > 1 else ''}** "
            f"(monolith FID {ms(mono)})",
            "",
            "| K | routing | ensemble FID | ratio, mean [95% CI] | per seed (bootstrap 95%) | "
            "GFLOPs/img |",
            "|---|---|---|---|---|---|",
        ]
        for c in sorted(cs, key=lambda c: (c["K"], c["ratio"]["mean"])):
            gf = c["per_seed"][0].get("gflops")
            out.append(
                f"| {c['K']} | {c['routing']} | {ms(c['fid'])} | {_ci(c)} | {_boots(c)} | "
                f"{f2(gf)} |"
            )
        out.append("")
    best = r.get("best", {})
    if best:
        out += [
            "Best one-expert routing per budget and K:",
            "",
            "| budget / K | routing | ratio | every seed < 1 |",
            "|---|---|---|---|",
        ]
        for g, b in sorted(best.items()):
            out.append(f"| {g} | {b['routing']} | {ms(b['ratio'])} | {b['every_seed_below_1']} |")
        out += ["", "Checks: " + ", ".join(f"{k}: {v}" for k, v in r["checks"].items()), ""]
    diag = r.get("diagnostics", {})
    if diag:
        out += [
            "Routing diagnostics (`decentdiff diagnose`, 1,500-step runs, top-1 traced on 500 "
            "images): router accuracy at the lowest / highest noise bin, worst expected "
            "calibration error, and how far top-1's expert mix departs from the cluster sizes "
            "(total variation) at the first and last sampling step.",
            "",
            "| run | accuracy t≈0.05 | accuracy t≈0.95 | largest cluster | max ECE | top-1 TV first | top-1 TV last | switches / image |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for k, d in sorted(diag.items()):
            out.append(
                f"| {k} | {d['accuracy'][0]:.2f} | {d['accuracy'][-1]:.2f} | "
                f"{d['prior_accuracy']:.2f} | {max(d['ece']):.3f} | {d['top1_tv_first']:.2f} | "
                f"{d['top1_tv_final']:.2f} | {d['top1_switches_per_image']:.2f} |"
            )
        out.append("")
    fig = _s10_figure(r)
    if fig:
        out += [f"![s10](figures/{fig})", ""]
    return out


def _s10_figure(r: dict) -> str | None:
    plt = _plt()
    cells = [c for c in r["cells"].values() if not c["class_cond"]]
    if not cells:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), sharey=True)
    for ax, K in zip(axes, (2, 4, 8), strict=True):
        for routing, style in (("mixture", "o-"), ("top1", "s--"), ("sticky:0.9", "^:"),
                               ("schedule:0.5,top1", "v-."), ("nucleus:0.9", "x:")):  # fmt: skip
            pts = sorted(
                (c for c in cells if c["K"] == K and c["routing"] == routing),
                key=lambda c: c["steps"],
            )
            if not pts:
                continue
            x = [c["steps"] * r["setup"]["batch"] for c in pts]
            y = [c["ratio"]["mean"] for c in pts]
            lo = [c["ratio"]["mean"] - c["ratio_t95"][0] for c in pts]
            hi = [c["ratio_t95"][1] - c["ratio"]["mean"] for c in pts]
            ax.errorbar(x, y, yerr=[lo, hi], fmt=style, capsize=3, label=routing)
        ax.axhline(1.0, color="gray", lw=1)
        ax.axhline(0.9, color="gray", lw=1, ls=":")
        ax.set_xscale("log")
        ax.set_xlabel("training images seen (∝ training FLOPs)")
        ax.set_title(f"K = {K}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("ensemble FID / monolith FID")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    name = "repro_s10.png"
    fig.savefig(FIGS / name, dpi=100)
    plt.close(fig)
    return name


def _iv(lo_hi) -> str:
    return f"[{lo_hi[0]:.2f}, {lo_hi[1]:.2f}]"


def body_s11(r: dict) -> list[str]:
    samplers = [f"{a}{b}" for a, b in r["setup"]["samplers"]]
    out = [
        "FID (1,000 images) by sampler and steps, mean ± std over seeds; ratio = best Euler "
        "(20 or 50 steps) / best ancestral (20 or 50), mean [95% t-interval].",
        "",
        "| model | " + " | ".join(samplers) + " | Euler / ancestral |",
        "|---|" + "---|" * (len(samplers) + 1),
    ]
    for arm, sm in r["summary"].items():
        cells = [ms(sm[k]) if k in sm else "–" for k in samplers]
        ratio = f"{sm['ratio_ode_to_ancestral']['mean']:.2f} {_iv(sm['ratio_interval95'])}"
        out.append(f"| {arm} | " + " | ".join(cells) + f" | {ratio} |")
    out += ["", "Checks: " + ", ".join(f"{k}: {v}" for k, v in r["checks"].items()), ""]
    return out


def body_s12(r: dict) -> list[str]:
    # arm -> (teacher, batch, extra); results saved before the arms existed: teacher -> batch
    arms = r["setup"].get("arms") or {t: (t, b, []) for t, b in r["setup"]["teachers"].items()}
    cols: list[str] = []
    for row in r["per_seed"].values():
        cols += [k for k in row if k not in cols]
    out = ["| seed | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for seed, row in r["per_seed"].items():
        out.append(f"| {seed} | " + " | ".join(f2(row.get(k)) for k in cols) + " |")
    out += [
        "",
        "| arm | teacher | student batch | init, options | student / monolith FID, mean "
        "[95% CI] | training FLOPs / monolith's |",
        "|---|---|---|---|---|---|",
    ]
    longer = r["setup"].get("longer", {})  # continued arms -> (the arm they continue, factor)
    for a, sm in r["summary"].items():
        root = a
        while root in longer:
            root = longer[root][0]
        teacher, batch, extra = arms[root]
        init = extra[extra.index("--init") + 1] if "--init" in extra else "random"
        sets = [extra[i + 1] for i, x in enumerate(extra) if x == "--set"]
        init += "".join(f", {x}" for x in sets)
        out.append(
            f"| {a} | {teacher} | {batch} | {init} | {sm['ratio_to_monolith']['mean']:.3f} "
            f"{_iv(sm['interval95'])} | {sm['train_flops_vs_monolith']['mean']:.2f} |"
        )
    out += ["", "Checks: " + ", ".join(f"{k}: {v}" for k, v in r["checks"].items()), ""]
    return out


def body_s13(r: dict) -> list[str]:
    out = ["| ensemble, sampler | FID mean ± std (min–max) |", "|---|---|"]
    out += [f"| {k} | {ms(v)} |" for k, v in r["summary"].items()]
    out += [
        "",
        "Heterogeneous / homogeneous FID, each by its best sampler: "
        + "; ".join(
            f"{a}: {', '.join(f'{x:.2f}' for x in xs)} (mean {sum(xs) / len(xs):.2f}, 95% CI "
            f"{_iv(r['intervals95'][a])})"
            for a, xs in r["ratios"].items()
        )
        + ". Checks: "
        + ", ".join(f"{k}: {v}" for k, v in r["checks"].items())
        + ".",
        "",
    ]
    return out


def _checks(r: dict) -> str:
    if not r["checks"]:
        return "Checks: none yet (fewer seeds than the study plans)."
    return "Checks: " + ", ".join(f"{k}: {v}" for k, v in r["checks"].items()) + "."


def body_s14(r: dict) -> list[str]:
    per = r["per_seed"]
    cols = ["dit monolith", "dit mixture", "dit top1", "unet monolith", "unet mixture", "unet top1"]
    out = ["| seed | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    out += [f"| {s} | " + " | ".join(f2(row.get(c)) for c in cols) + " |" for s, row in per.items()]
    out += ["", "| ratio | mean ± std (min–max) | 95% t-interval |", "|---|---|---|"]
    out += [f"| {k} | {ms(r['summary'][k])} | {_iv(v)} |" for k, v in r["intervals95"].items()]
    if elsewhere := r.get("setup", {}).get("dit_seeds_recorded_elsewhere"):
        out += ["", "DiT seed(s) " + ", ".join(map(str, elsewhere)) + " as recorded on another "
                "machine (their RUNs are not here; `run --repeat` retrains them)."]  # fmt: skip
    out += ["", _checks(r), ""]
    return out


def body_s15(r: dict) -> list[str]:
    out = ["| quantity | mean ± std (min–max) | 95% t-interval |", "|---|---|---|"]
    for k, v in r["summary"].items():
        iv = _iv(r["intervals95"][k]) if k in r["intervals95"] else ""
        out.append(f"| {k} | {ms(v)} | {iv} |")
    out += ["", _checks(r), ""]
    return out


def body_s16(r: dict) -> list[str]:
    per, summ, ratios = r["per_seed"], r["summary"], r["ratios"]
    out = ["| arm | seeds | FID (mean ± std (min–max)) | / central, per seed (95% t-interval) | "
           "bytes on the wire |", "|---|---|---|---|---|"]  # fmt: skip
    for arm, rows in per.items():
        rat = ratios.get(f"{arm} / central")
        rtxt = "–" if rat is None else f"{ms(rat)}" + (
            f" {_iv(rat['interval95'])}" if rat["count"] > 1 else "")  # fmt: skip
        nbytes = next(iter(rows.values())).get("bytes", 0)
        out.append(f"| {arm} | {len(rows)} | {ms(summ[arm])} | {rtxt} | "
                   f"{mb(nbytes) if nbytes else '0 (central)'} |")  # fmt: skip
    others = {k: v for k, v in ratios.items() if not k.endswith(" / central")}
    if others:
        out += ["", "| ratio, per seed | mean ± std (min–max) | 95% t-interval |", "|---|---|---|"]
        out += [f"| {k} | {ms(v)} | {_iv(v['interval95'])} |" for k, v in others.items()]
    if best := r.get("best_fedavg"):
        out += ["", f"Best IID FedAvg recipe measured on every seed, of {len(best['candidates'])} "
                f"such arms: **{best['arm']}**, {best['mean']:.2f}x central "
                f"(95% t-interval {_iv(best['interval95'])}; picked by its mean on the same "
                "seeds that score it)."]  # fmt: skip
    out += ["", "UDEC rows: the mean over the 5 clients' personal models (each scored on its own "
            "1,000 samples).", "", _checks(r)]  # fmt: skip
    if claims := r.get("claims_of_studies_6_and_7"):
        out += ["", "Studies 6 and 7's claims on this recipe (not part of the verdict above): "
                + "; ".join(f"{k}: **{v}**" for k, v in claims.items()) + "."]  # fmt: skip
    out += ["", "![s16](figures/repro_s16.png)"]
    plt = _plt()
    # The arms measured on every seed first, then the one-seed arms; each group best first.
    most = max(m["count"] for m in summ.values())
    many = sorted((a for a in per if summ[a]["count"] == most), key=lambda a: summ[a]["mean"])
    one = sorted((a for a in per if summ[a]["count"] < most), key=lambda a: summ[a]["mean"])
    arms = many + one
    fig, ax = plt.subplots(figsize=(8, 0.28 * len(arms) + 1.6))
    for i, arm in enumerate(arms):
        m = summ[arm]
        nbytes = next(iter(per[arm].values())).get("bytes", 0)
        colour = "gray" if not nbytes else "tab:orange" if "dec" in arm.split()[0] else "tab:blue"
        ax.barh(i, m["mean"], xerr=m["std"] if m["count"] > 1 else None, color=colour,
                capsize=2, height=0.6, alpha=1.0 if m["count"] > 1 else 0.55)  # fmt: skip
        ax.text(m["mean"] * 1.05, i, f"{m['mean']:.1f}", va="center", fontsize=6)
    labels = []
    for arm in arms:
        nbytes = next(iter(per[arm].values())).get("bytes", 0)
        n = summ[arm]["count"]
        seeds = f", {n} seeds" if 1 < n < most else ""
        labels.append(f"{arm} ({nbytes / 1e6:,.0f} MB{seeds})" if nbytes else f"{arm}{seeds}")
    ax.set_yticks(range(len(arms)), labels, fontsize=6)
    if many and one:
        ax.axhline(len(many) - 0.5, color="black", lw=0.6)
        for y, text in ((-0.9, f"{most} seeds, mean ± std"),
                        (len(many) - 0.3, "fewer seeds (one, seed 0, unless named)")):  # fmt: skip
            ax.text(0.99, y, text, fontsize=7, ha="right", va="top",
                    transform=ax.get_yaxis_transform())  # fmt: skip
    if "central" in summ:
        ax.axvline(summ["central"]["mean"], color="gray", lw=0.8, ls="--")
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel(
        "FID (1,000 samples, log scale; dashed: central training)\n"
        "gray: central, blue: FedAvg, orange: UDEC, ULATDEC; bytes sent and received in parentheses"
    )
    ax.set_title("Federated recipes against central training on the same 64k images", fontsize=9)
    fig.tight_layout()
    fig.savefig(FIGS / "repro_s16.png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    out += ["", "![s16 bytes](figures/repro_s16_bytes.png)"]
    _fig_s16_bytes(plt, per, summ)
    return out


def _fig_s16_bytes(plt, per: dict, summ: dict) -> None:
    """FID against bytes sent: every federated arm below 200 FID a point, central runs as lines."""
    fig, ax = plt.subplots(figsize=(9, 5.5))
    # Many arms send the same bytes; the table has them all.
    groups: dict[int, list[str]] = {}
    for arm, rows in per.items():
        nbytes = next(iter(rows.values())).get("bytes", 0)
        if nbytes and summ[arm]["mean"] <= 200:
            groups.setdefault(nbytes, []).append(arm)

    def colour_of(arm: str) -> str:
        return "tab:orange" if "dec" in arm.split()[0] else "tab:blue"

    def nbytes_of(arm: str) -> int:
        return next(iter(per[arm].values())).get("bytes", 0)

    # Named: each family's best IID trade (the IID arms measured on every seed that no such arm of
    # the same colour beats on both FID and bytes, joined by a line) and the papers' protocols.
    multi = [a for g in groups.values() for a in g if summ[a]["count"] > 1]
    iid = [a for a in multi if ":" not in a.split()[-1] and "fedprox" not in a]
    named = {a for a in ("fedavg paper", "udec paper") if a in multi}
    for colour in ("tab:blue", "tab:orange"):
        family = sorted(
            (a for a in iid if colour_of(a) == colour),
            key=lambda a: (nbytes_of(a), summ[a]["mean"]),
        )
        front, best = [], float("inf")
        for a in family:
            if summ[a]["mean"] < best:
                front.append(a)
                best = summ[a]["mean"]
        named |= set(front)
        if len(front) > 1:
            ax.plot([nbytes_of(a) for a in front], [summ[a]["mean"] for a in front],
                    color=colour, lw=0.8, alpha=0.6)  # fmt: skip
    for arm, rows in per.items():
        m, nbytes = summ[arm], next(iter(rows.values())).get("bytes", 0)
        if not nbytes:
            ax.axhline(m["mean"], color="gray", lw=0.8, ls="--")
            ax.text(0.01, m["mean"] * 1.02, arm, fontsize=6, color="gray",
                    transform=ax.get_yaxis_transform())  # fmt: skip
            continue
        if m["mean"] > 200:
            continue  # off the chart: the untuned FedAdam arms (in the table)
        colour = colour_of(arm)
        ax.errorbar(nbytes, m["mean"], yerr=m["std"] if m["count"] > 1 else None, fmt="o",
                    color=colour, ms=4, capsize=2,
                    mfc=colour if m["count"] > 1 else "none")  # fmt: skip
        if arm in named:
            ax.annotate(arm, (nbytes, m["mean"]), fontsize=5.5, xytext=(5, -2),
                        textcoords="offset points")  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("bytes sent and received by all clients (log scale)")
    ax.set_ylabel("FID (1,000 samples, log scale)")
    ax.set_title("FID against bytes (blue: FedAvg, orange: UDEC, ULATDEC; dashed: central; "
                 "hollow: one seed;\nlines: each family's best IID trade on every seed, Huber and MSE arms alike)",
                 fontsize=9)  # fmt: skip
    fig.tight_layout()
    fig.savefig(FIGS / "repro_s16_bytes.png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def body_s19(r: dict) -> list[str]:
    """Per labelled subset: cluster-label agreement of each featuriser at each K, mean of the
    partition seeds, as NMI (AMI: adjusted for chance)."""
    out = []
    for name, t in r["table"].items():
        rows = t["agreement"]
        ks = list(next(iter(rows.values())))
        out += [
            f"**{name}** ({t['images']} images, {t['classes']} classes): NMI (AMI), mean of "
            f"{len(r['setup']['seeds'])} partition seeds.",
            "",
            "| features | " + " | ".join(ks) + " |",
            "|---" * (len(ks) + 1) + "|",
        ]
        for arm, per_k in rows.items():
            cells = [
                f"{sum(v['nmi']) / len(v['nmi']):.3f} ({sum(v['ami']) / len(v['ami']):.3f})"
                for v in per_k.values()
            ]
            out.append(f"| {arm} | " + " | ".join(cells) + " |")
        if "default_over_pca_nmi" in t:
            ratio = ", ".join(f"{k} {v:.1f}x" for k, v in t["default_over_pca_nmi"].items())
            out += ["", f"The default's NMI over pixel PCA's: {ratio}."]
        out.append("")
    out += [_checks(r), ""]
    return out


def body_s20(r: dict) -> list[str]:
    """Each finished RUN: the ensemble's FID per routing against its FLOP-matched monolith."""
    out = [
        "| RUN | steps | routing | ensemble FID | monolith FID | ratio | floor |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for run, res in r["results"].items():
        for routing, row in res["rows"].items():
            out.append(
                f"| {run} | {res['steps']} | {routing} | {f2(row['fid'])} | "
                f"{f2(row['monolith_fid'])} | {row['ratio']:.3f} | {f2(row.get('floor'))} |"
            )
    for steps, h in r.get("headline", {}).items():
        out += [
            "",
            f"Headline (K=4, class-conditional, top1) at {steps} steps: ratios "
            + ", ".join(f"{x:.3f}" for x in h["top1_ratios"])
            + f"; mean {h['mean']:.3f}, 95% t-interval {_iv(h['interval'])}.",
        ]
    for t in r.get("classes_tables", {}).values():
        kind = "class-conditional" if t["cond"] else "unconditional"
        warm = f", experts from the monolith at step {t['warm']}" if t.get("warm") else ""
        size = t.get("size", 32)
        guided = f", guidance {t['guidance']:g}" if t.get("guidance") else ""
        what = (
            f"K={t.get('K', 4)}, `{t['preset']}` preset, {kind}{warm}, {size}x{size}, "
            f"{t['steps']} steps{guided}"
        )
        gap = t.get("expert_loss_gap")
        for routing in ("mixture", "top1", "sample:1", "full"):
            c = t.get(routing)
            if not c:
                continue
            iv = f", 95% t-interval {_iv(c['interval'])}" if c.get("interval") else ""
            out += [
                "",
                f"Whole-class clusters (`--by classes`), {what}, {routing}, seeds "
                + ", ".join(str(s) for s in c["seeds"])
                + ": ensemble / monolith FID "
                + ", ".join(
                    f"{e:.1f} / {m:.1f}"
                    for e, m in zip(c["ensemble_fid"], c["monolith_fid"], strict=True)
                )
                + "; ratios "
                + ", ".join(f"{x:.3f}" for x in c["ratios"])
                + f"; mean {c['mean']:.3f}{iv}.",
            ]
        if gap:
            out += [
                "",
                f"{what}: each expert's held-out flow-matching loss on its own cluster minus the "
                "monolith's on the same images, relative to the monolith's, over "
                f"{gap['count']} (cluster, seed) pairs: {gap['mean']:.1%} on average "
                f"({gap['min']:.1%} to {gap['max']:.1%})"
                + (" (every one positive: the experts model their clusters worse)." if gap["min"] > 0
                   else " (every one negative: the experts model their clusters better)."
                   if gap["max"] < 0 else "."),
            ]  # fmt: skip
    fig = _s20_figure(r)
    if fig:
        out += ["", f"![s20](figures/{fig})"]
    out += ["", _checks(r), ""]
    if r.get("exploratory"):  # guidance scales tried after the fact: not part of the verdict
        out += ["Exploratory, not part of the verdict: "
                + ", ".join(f"{k}: {v}" for k, v in r["exploratory"].items()) + ".", ""]  # fmt: skip
    return out


def _log_axes(ax, xlabel: str, ylabel: str, title: str, legend: int) -> None:
    """A log-x panel's labels, title, grid and legend."""
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend)


def _s20_figure(r: dict) -> str | None:
    """Left: FID against training FLOPs, ensemble (mixture) and monolith, per arm: mean over
    seeds, bars from the lowest to the highest seed. Right: each seed's ensemble / monolith."""
    pts: dict[tuple[str, str], dict[float, list[float]]] = {}
    per_seed: dict[tuple[str, int], dict[float, float]] = {}
    for res in r["results"].values():
        row = res["rows"].get("mixture")
        if not row or not row.get("train_flops") or res.get("by") != "classes":
            continue
        if res.get("guidance"):  # another guidance than the study's: the text's tables, not here
            continue
        kind = "cond" if res["cond"] else "uncond"
        warm = f", warm {res['warm']}" if res.get("warm") else ""
        label = f"{res.get('preset', r['setup']['preset'])} {kind}{warm}, K={res['K']}"
        label += f", {res['size']}px" if res["size"] != 32 else ""
        for who, fid, flops in (("ensemble", row["fid"], row["train_flops"]),
                                ("monolith", row["monolith_fid"], row["monolith_train_flops"])):  # fmt: skip
            pts.setdefault((label, who), {}).setdefault(flops, []).append(fid)
        per_seed.setdefault((label, res["seed"]), {})[row["train_flops"]] = row["ratio"]
    if not pts:
        return None
    plt = _plt()
    fig, (ax, rx) = plt.subplots(1, 2, figsize=(11, 4.2))
    colours = {}
    for (label, who), by_flops in sorted(pts.items()):
        colour = colours.setdefault(label, f"C{len(colours)}")
        xs = sorted(by_flops)
        ys = [sum(by_flops[x]) / len(by_flops[x]) for x in xs]
        lo = [y - min(by_flops[x]) for x, y in zip(xs, ys, strict=True)]
        hi = [max(by_flops[x]) - y for x, y in zip(xs, ys, strict=True)]
        ax.errorbar([x / 1e12 for x in xs], ys, yerr=[lo, hi], capsize=3, color=colour,
                    fmt="o-" if who == "ensemble" else "s--", label=f"{label}: {who}")  # fmt: skip
    _log_axes(ax, "training TFLOPs (router included)", "FID, 1,000 samples (Inception)",
              "Tiny ImageNet, whole-class clusters", 7)  # fmt: skip
    for (label, seed), ratios in sorted(per_seed.items()):
        xs = sorted(ratios)
        rx.plot([x / 1e12 for x in xs], [ratios[x] for x in xs], "o-", color=colours[label],
                alpha=0.8, lw=1, label=f"{label}, seed {seed}")  # fmt: skip
    rx.axhline(1.0, color="gray", lw=1)
    rx.axhline(0.9, color="gray", lw=1, ls=":")
    _log_axes(rx, "training TFLOPs", "ensemble FID / monolith FID",
              "each seed (dotted: 0.9x, the target)", 6)  # fmt: skip
    fig.tight_layout()
    name = "repro_s20.png"
    fig.savefig(FIGS / name, dpi=100)
    plt.close(fig)
    return name


# A study's body is body_s<N>; these share another's table.
body_s3 = body_s9 = body_table_checks
body_s17 = body_s18 = body_s15  # quantities with intervals


def body_s21(r: dict) -> list[str]:
    attacks = r["setup"]["attacks"]
    out = ["FID of the global model, mean ± std (min–max) over the seeds every rule finished that "
           "attack on (their count in the last row), and its 95% t-interval.", "",
           "| clients | rule | " + " | ".join(f"FID, {a}" for a in attacks) + " |",
           "|---|---|" + "---|" * len(attacks)]  # fmt: skip
    for clients, key in ((r["setup"]["clients"], "five_clients"),
                         (r["setup"]["bulyan_clients"], "seven_clients")):  # fmt: skip
        if not r.get(f"{key}_seeds", {}).get("honest", [None]):
            continue
        for rule, arms in r[key].items():
            cells = [f"{ms(arms[a]['fid'])} {_iv(arms[a]['interval'])}" if arms[a].get("fid")
                     else "not run" for a in attacks]  # fmt: skip
            out.append(f"| {clients} | {rule} | " + " | ".join(cells) + " |")
        seeds = r.get(f"{key}_seeds", {})
        out.append(f"| {clients} | seeds | " + " | ".join(str(len(seeds.get(a, []))) for a in attacks)
                   + " |")  # fmt: skip
    return [*out, "", _checks(r)]


def body_s22(r: dict) -> list[str]:
    out = ["| seed | client batch | images | personal models' FID (mean of 5) | central monolith "
           "(steps) | ratio | rounds' time |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for seed, v in r["per_seed"].items():
        out.append(f"| {seed} | {v['client_batch']} | {v['images']:,} | {v['fed_fid']:.2f} ± "
                   f"{v['fed_fid_std_over_clients'] or 0:.2f} | {v['central_fid']:.2f} "
                   f"({v['central_steps']}) | {v['ratio']:.2f}x | {v['fed_round_seconds']:.0f} s |")  # fmt: skip
    if r.get("ratio"):
        out += [
            "",
            f"Ratio over seeds: {ms(r['ratio'])}, 95% t-interval {_iv(r['ratio']['interval'])}.",
        ]
    return [*out, "", _checks(r)]


def body_s23(r: dict) -> list[str]:
    out = ["| arm | σ | ε at δ = 1e-5 | seeds | FID, mean ± std (min–max) | 95% t-interval |",
           "|---|---|---|---|---|---|"]  # fmt: skip
    for name, a in r["arms"].items():
        if not a.get("fid"):
            continue
        eps = "∞" if a["epsilon"] is None else f"{a['epsilon']:.3g}"
        seeds = ", ".join(map(str, a["seeds"]))
        out.append(f"| {name} | {a['sigma']:.3g} | {eps} | {seeds} | {ms(a['fid'])} | "
                   f"{_iv(a['interval'])} |")  # fmt: skip
    return [*out, "", _checks(r)]


def body_s24(r: dict) -> list[str]:
    scales = list(r["scales"])
    out = ["| seed | " + " | ".join(f"guidance {g}" for g in scales) + " | lowest |",
           "|---|" + "---|" * (len(scales) + 1)]  # fmt: skip
    for seed, v in r["per_seed"].items():
        cells = [f2(v["scales"][g]["fid"]) for g in scales]
        out.append(f"| {seed} | " + " | ".join(cells) + f" | {v['best']} |")
    out.append("| mean (95% t-interval) | " + " | ".join(
        f"{f2(r['scales'][g]['mean'])} ({_iv(r['scales'][g]['interval'])})" for g in scales)
        + " | |")  # fmt: skip
    q = r.get("ratio_default_to_none")
    if q:
        out += ["", f"FID at guidance {r['setup'].get('default', 3):g} / at guidance 1, per seed: "
                + ", ".join(f"{x:.3f}" for x in q["per_seed"])
                + f"; mean {q['mean']:.3f}, 95% t-interval {_iv(q['interval'])}."]  # fmt: skip
    return [*out, "", _checks(r)]


def body_s25(r: dict) -> list[str]:
    out = ["| arm | seeds | FID, mean ± std (min–max) | 95% t-interval | upload per round | "
           "seconds per round | FID / plain's |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, a in r["arms"].items():
        q = r["ratios"].get(name)
        ratio = f"{q['mean']:.3f} ({_iv(q['interval'])})" if q else "1"
        out.append(f"| {name} | {', '.join(map(str, a['seeds']))} | {ms(a['fid'])} | "
                   f"{_iv(a['interval'])} | {a['up_per_round']['mean']:,.0f} B | "
                   f"{a['seconds_per_round']['mean']:.2f} s | {ratio} |")  # fmt: skip
    for name, q in r["ratios"].items():
        out += ["", f"{name} against plain FedAvg on the same seeds: {q['bytes']:.2f}x the upload "
                f"bytes and {q['time']:.2f}x the seconds per round."]  # fmt: skip
    s23 = r.get("s23_server_dp")
    if s23:
        out += ["", f"Study 23's server-side DP at the same σ and clip: FID {ms(s23['fid'])} "
                f"(seeds {', '.join(map(str, s23['seeds']))})."]  # fmt: skip
    return [*out, "", _checks(r)]


#: Each study's result body, by module (every registered study has one: tests/test_experiments.py).
BODIES = {s.module: globals()[f"body_s{s.number}"] for s in STUDIES}


def reading(study: Study) -> str | None:
    """The study's reading (experiments/readings/<module>.md), as written; None if it has none."""
    p = study.reading
    return p.read_text().strip() if p.is_file() else None


INTRO = """# The reproduction study: the papers' claims re-measured at MNIST scale

Generated by `python experiments/report.py` from `docs/reproduction/*.json` (the numbers each study
wrote). Every study is a script in `experiments/` that runs alone (`python experiments/s1_ddm_vs_monolith.py`)
or all in order (`make repro`, i.e. `python experiments/run_all.py`); they drive the ordinary
`decentdiff` commands, resume where they stopped, and log every command with its wall time in
`runs/repro/commands.jsonl`.

**Scale.** These are 2-CPU-core runs on the 4,000 training images of the embedded MNIST subset
(1,000 held out): the `compact` UNet (0.65 M parameters), 300 steps at batch 64 for a monolith (each
of K experts: 300 steps at 64/K), unconditional, 19k training images in all; a federation: 5
clients x 10 rounds x 20 local steps at batch 64, 64k images (3.3x a DDM run's). Study 8 compares
the two at both budgets. An earlier federated budget of 5 rounds x 6 local steps left every
federated model untrained (FID 245-499 vs 19.7 centralised); its results are in the git history
(commit ff35cb2). The papers trained for hundreds of thousands of steps
on ImageNet, LAION or Fashion-MNIST. Study 10 (issue 14) uses a different budget on purpose: the
`tiny` UNet (87k parameters) trained 500-5,000 steps, the capacity-limited regime where DDM's
K-times-the-parameters should show, with 1,000 generated images per FID. FID here uses the features of a small classifier trained on the
training part (not Inception), so the absolute numbers are not comparable with the papers', only the
ratios and orderings; the *floor* (training part vs held-out part) is given beside each study. With
{n} generated images per FID, differences of a few percent are within noise: study 1's spread over 3
seeds is the yardstick. A verdict is **held**, **not held** or **mixed**, by the rule written in each
script (and repeated below); a result that contradicts the paper is reported as such.

**Layout.** The studies are grouped by area, each group in the order its questions build on each
other. A study's number is its id: the order the studies ran in, and the order `make repro` runs
them in (later studies reuse earlier ones' runs). The summary gives each study's question, its
verdict and the default or claim it justifies, with where that default lives (code paths under
`src/decentdiff/`). The list of studies is `experiments/studies.py`; each study's reading, written
after its numbers, is `experiments/readings/<study>.md`.

"""


def main() -> int:
    FIGS.mkdir(parents=True, exist_ok=True)
    results = {}
    for study in STUDIES:
        p = RESULTS / f"{study.module}.json"
        if p.is_file():
            results[study.module] = json.loads(p.read_text())
    if not results:
        print(
            f"no results in {RESULTS}; run `python experiments/run_all.py` first", file=sys.stderr
        )
        return 2
    n = next((r["setup"].get("n") for r in results.values() if "n" in r.get("setup", {})), "?")
    lines = [INTRO.replace("{n}", str(n)), *_summary(results)]
    for area, heading, about in AREAS:
        lines += [f"## {heading}", "", about, ""]
        for study in in_area(area):
            if study.module in results:
                lines += _section(study, results[study.module])
    DOC.write_text("\n".join(lines) + "\n")
    print(f"-> {DOC}")
    return 0


def _summary(results: dict[str, dict]) -> list[str]:
    """One table per area: each study's question, verdict and what it justifies, linked."""
    wall = sum(r["wall_s"] for r in results.values()) / 3600
    lines = [
        "## Summary",
        "",
        f"{len(results)} of {len(STUDIES)} studies have results, {wall:.0f} hours of wall time in "
        "all (each section gives its own).",
        "",
    ]
    for area, heading, _ in AREAS:
        lines += [
            f"**[{heading}](#{_anchor(heading)})**",
            "",
            "| study | question | verdict | justifies |",
            "|---|---|---|---|",
        ]
        for study in in_area(area):
            r = results.get(study.module)
            verdict = f"**{r['verdict']}**" if r else "not run yet"
            link = f"[{study.number}](#{_anchor(study.heading)})" if r else str(study.number)
            lines.append(f"| {link} | {study.question} | {verdict} | {study.justifies} |")
        lines.append("")
    return lines


def _section(study: Study, r: dict) -> list[str]:
    """A study's section: claim, set-up, result, reading, verdict and commands."""
    lines = [
        f"### {study.heading}",
        "",
        f"**Question.** {study.question}",
        "",
        f"**Justifies.** {study.justifies}",
        "",
        f"**Paper's claim.** {r['claim']}",
        "",
        *_setup_lines(r["setup"]),
        "",
        "**Result.**",
        "",
    ]
    lines += BODIES[study.module](r)
    if text := reading(study):
        lines += ["", f"**Reading.** {text}"]
    lines += [
        "",
        f"**Verdict: {r['verdict']}.** Wall time {r['wall_s'] / 60:.1f} min "
        f"(recorded {r['recorded']}, scale {r['scale']}).",
        "",
        "<details><summary>Commands</summary>",
        "",
        "```",
    ]
    lines += [_relative(c) for c in r["commands"]]
    lines += ["```", "", "</details>", ""]
    return lines


def _setup_lines(setup: dict) -> list[str]:
    """The set-up as one JSON line; a long table of arms goes into a folded list, one arm a line."""
    arms = setup.get("arms")
    text = _relative(json.dumps(setup))
    if not isinstance(arms, dict) or len(text) <= 1000:
        return [f"**Set-up here.** `{text}`"]
    rest = _relative(json.dumps({k: v for k, v in setup.items() if k != "arms"}))
    lines = [
        f"**Set-up here.** `{rest}`",
        "",
        f"<details><summary>The {len(arms)} arms and their options</summary>",
        "",
    ]
    if all(isinstance(d, list) and len(d) == 3 and d[0] in ("central", "fed") and isinstance(d[2], list)
           for d in arms.values()):  # fmt: skip
        lines += ["| arm | kind | method | options |", "|---|---|---|---|"]
        lines += [
            f"| {name} | {kind} | {method or '–'} | `{' '.join(map(str, opts)) or '–'}` |"
            for name, (kind, method, opts) in arms.items()
        ]
    else:
        lines += ["| arm | definition |", "|---|---|"]
        lines += [f"| {name} | `{_relative(json.dumps(d))}` |" for name, d in arms.items()]
    return [*lines, "", "</details>"]


def _anchor(title: str) -> str:
    keep = "".join(c for c in title.lower() if c.isalnum() or c in " -")
    return keep.replace(" ", "-")


if __name__ == "__main__":
    sys.exit(main())
