"""Study 21: robust aggregation against one malicious client of five, and its price when every
client is honest.

FedAvg FULL at the federated budget (FED: mnist5k, flow matching, 5 IID clients x 10 rounds x 20
local steps at batch 64) with the 87k-parameter ``tiny`` UNet (half the time of ``compact`` per
round, so that 3 seeds of every rule and attack fit on two cores), on study 16's central recipe (``--recipe central``: the
central trainer's lr, warm-up and loss, Adam kept between rounds, a server EMA), with each server
rule of ``--aggregate`` in place of the weighted average. Client 3 sends, every round, 100x its
update (``--attack scale:100@3``), its update sign-flipped (``signflip:1@3``) or Gaussian noise in
its place (``noise:0.05@3``; honest updates move a weight by about 0.01 over a round here), or
nothing is wrong (honest). Bulyan needs n >= 4F + 3 = 7 reporters for F = 1, so its arms (phase
``seven``) run 7 clients (one attacker of seven) against FedAvg at 7 clients. FID on FED["n"]
samples (Euler, 20 steps), SEEDS seeds.

The jobs run honest and scaled arms seed by seed first, then the sign-flipped and noise arms seed by
seed, so a partial study holds whole seeds; ``report`` summarises, per attack, the seeds every
rule has finished.

    python experiments/s21_robust_aggregation.py run [--phase five|seven] [--worker I/N]
    python experiments/s21_robust_aggregation.py report
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from common import (
    FED,
    ROOT,
    SEEDS,
    claim,
    cli,
    find_row,
    overall,
    previous,
    save,
    summarise,
    t_interval,
    worker_arg,
)

STUDY = "s21_robust_aggregation"
CLAIM = (
    "Byzantine-robust aggregation (median, trimmed mean, Krum, MultiKrum, Bulyan) keeps a "
    "federated diffusion model's FID near its honest value when one client of five sends a "
    "scaled, sign-flipped or noise update, where FedAvg's degrades; at a small FID cost when "
    "every client is honest."
)
RULES = ("fedavg", "median", "trimmed-mean:0.2", "krum:1", "multikrum:1,3")
BULYAN = ("fedavg", "bulyan:1")  # at 7 clients
ATTACKS = {"honest": "", "scale": "scale:100@3", "signflip": "signflip:1@3",
           "noise": "noise:0.05@3"}  # fmt: skip
PRESET = "tiny"
#: The order the attacks run in: (attacks, then seed by seed), so the first complete seeds are
#: the honest and scaled arms.
WAVES = (("honest", "scale"), ("signflip", "noise"))
PHASES = {"five": (RULES, FED["clients"]), "seven": (BULYAN, 7)}
#: FedAvg under attack is broken when its FID is this multiple of its honest FID; a rule holds
#: when its attacked FID is within HOLD of its own honest one, and is cheap when its honest FID
#: is within HOLD of FedAvg's.
BROKEN, HOLD = 1.5, 1.2


def run_dir(rule: str, attack: str, seed: int, clients: int) -> Path:
    return ROOT / "s21" / f"{rule.replace(':', '').replace(',', '-')}-{attack}-c{clients}-s{seed}"


def fed_args(run: Path, seed: int, clients: int, *extra: Any) -> list[Any]:
    """``fed run`` of FED's budget on study 16's central recipe (shared with study 23)."""
    f = FED
    return ["fed", "run", run, "--data", f["data"], "--preset", PRESET, "--clients", clients,
            "--split", "iid", "--method", "full", "--rounds", f["rounds"], "--local-steps",
            f["local_steps"], "--batch", f["batch"], "--seed", seed, "--objective",
            f["objective"], "--recipe", "central", *extra, "--n", 0, "--quiet"]  # fmt: skip


def score(run: Path, seed: int, study: str) -> dict[str, Any]:
    """The global model's eval row (scored once; resumable)."""
    row = find_row(run, kind="fed_eval", n=FED["n"])
    if row is None:
        cli("fed", "eval", run, "--n", FED["n"], "--sample-steps", FED["sample_steps"], "--seed",
            seed, "--quiet", study=study)  # fmt: skip
        row = find_row(run, kind="fed_eval", n=FED["n"])
    return row


def arm(rule: str, attack: str, seed: int, clients: int) -> float:
    """FID of the global model of one federation (trained and scored once; resumable)."""
    finished = done(rule, attack, seed, clients)
    if finished is not None:  # trained and scored: skip the command's start-up
        return finished
    run = run_dir(rule, attack, seed, clients)
    extra: list[Any] = ["--aggregate", rule]
    if ATTACKS[attack]:
        extra += ["--attack", ATTACKS[attack]]
    cli(*fed_args(run, seed, clients, *extra), study=STUDY)
    return float(score(run, seed, STUDY)["fid"]["mean"])  # one model (FULL): its FID


def jobs(phases: tuple[str, ...]) -> list[tuple[str, str, int, int]]:
    """(rule, attack, seed, clients): wave by wave, seed-major within a wave."""
    out = []
    for phase in phases:
        rules, clients = PHASES[phase]
        for wave in WAVES:
            out += [(r, a, s, clients) for s in SEEDS for a in wave for r in rules]
    return out


def work(argv: list[str]) -> None:
    phases = (argv[argv.index("--phase") + 1],) if "--phase" in argv else tuple(PHASES)
    worker = worker_arg(argv)
    for i, (rule, attack, seed, clients) in enumerate(jobs(phases)):
        if worker is not None:
            if i % worker[1] != worker[0]:
                continue
            if not claim(ROOT / "s21" / "claims" / run_dir(rule, attack, seed, clients).name):
                continue
        arm(rule, attack, seed, clients)


def done(rule: str, attack: str, seed: int, clients: int) -> float | None:
    """The arm's FID: scored here, or, when its run directory is not on this machine, what the
    last save recorded for it (measured on another machine; None if never)."""
    run = run_dir(rule, attack, seed, clients)
    if run.exists():
        row = find_row(run, kind="fed_eval", n=FED["n"])
        return None if row is None else float(row["fid"]["mean"])
    return recorded(rule, attack, seed, clients)


def setup() -> dict[str, Any]:
    """What every arm shares (JSON-normalised, so it compares with a saved one)."""
    return json.loads(json.dumps({
        **{k: v for k, v in FED.items() if k != "lr"},  # the recipe sets lr
        "preset": PRESET,
        "recipe": "central",
        "rules": list(RULES),
        "bulyan_clients": 7,
        "attacks": ATTACKS,
        "broken": BROKEN,
        "hold": HOLD,
        "seeds": list(SEEDS),
    }))  # fmt: skip


def recorded(rule: str, attack: str, seed: int, clients: int) -> float | None:
    """The FID the last saved result holds for an arm, or None (also when that save was made with
    another set-up: its FIDs are not this study's)."""
    before = previous(STUDY) or {}
    if before.get("setup") != setup():
        return None
    table = before.get("five_clients" if clients == FED["clients"] else "seven_clients")
    cell = (table or {}).get(rule, {}).get(attack, {})
    per = dict(zip(cell.get("seeds", ()), cell.get("per_seed", ()), strict=True))
    return None if per.get(seed) is None else float(per[seed])


def table(rules: tuple[str, ...], clients: int) -> tuple[dict[str, Any], dict[str, list[int]]]:
    """FID per rule and attack over the seeds on which every rule has finished that attack and the
    honest arm (so an attack's ratios compare like with like), and those seeds per attack."""
    seeds = {
        a: [
            s
            for s in SEEDS
            if all(done(r, x, s, clients) is not None for r in rules for x in {a, "honest"})
        ]
        for a in ATTACKS
    }
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for rule in rules:
        out[rule] = {}
        for attack in ATTACKS:
            fids = [done(rule, attack, s, clients) for s in seeds[attack]]
            out[rule][attack] = {"per_seed": fids, "seeds": seeds[attack]}
            if fids:
                out[rule][attack].update(fid=summarise(fids), interval=t_interval(fids))
    return out, seeds


def checks_of(t: dict[str, dict[str, dict[str, Any]]]) -> dict[str, str]:
    def mean(rule: str, attack: str, like: str | None = None) -> float:
        """Mean FID of ``attack`` (over the seeds of ``like``'s table when given)."""
        seeds = t[rule][like or attack]["seeds"]
        per = dict(zip(t[rule][attack]["seeds"], t[rule][attack]["per_seed"], strict=True))
        if like is None:
            return t[rule][attack]["fid"]["mean"]
        return sum(per[s] for s in seeds) / len(seeds)

    out: dict[str, str] = {}
    for attack in ATTACKS:
        if attack == "honest" or len(t["fedavg"][attack]["seeds"]) < len(SEEDS):
            continue  # no verdict on fewer seeds than planned
        broken = mean("fedavg", attack) > BROKEN * mean("fedavg", "honest", attack)
        out[f"fedavg_degrades_under_{attack}"] = "held" if broken else "not held"
        for rule in t:
            if rule != "fedavg":
                ok = mean(rule, attack) <= HOLD * mean(rule, "honest", attack)
                out[f"{rule}_holds_under_{attack}"] = "held" if ok else "not held"
    for rule in t:
        if rule != "fedavg":
            cheap = mean(rule, "honest") <= HOLD * mean("fedavg", "honest")
            out[f"{rule}_cheap_when_honest"] = "held" if cheap else "not held"
    return out


def report() -> dict[str, Any]:
    result: dict[str, Any] = {
        "claim": CLAIM,
        "setup": setup(),
    }
    checks: dict[str, str] = {}
    for phase, key, suffix in (("five", "five_clients", ""), ("seven", "seven_clients", " (7)")):
        t, seeds = table(*PHASES[phase])
        result[key] = t
        result[f"{key}_seeds"] = seeds
        if len(seeds["honest"]) == len(SEEDS):  # a verdict only on every planned seed
            checks.update({f"{k}{suffix}": v for k, v in checks_of(t).items()})
    result["measured_elsewhere"] = sorted(
        run_dir(*j).name for j in jobs(tuple(PHASES))
        if not run_dir(*j).exists() and recorded(*j) is not None
    )  # fmt: skip
    result["checks"] = checks
    result["verdict"] = overall(checks)
    save(STUDY, result)
    return result


def main(argv: list[str]) -> None:
    phase = argv[0] if argv and not argv[0].startswith("-") else "all"
    if phase in ("run", "all"):
        work(argv)
    if phase in ("report", "all"):
        report()


if __name__ == "__main__":
    main(sys.argv[1:])
