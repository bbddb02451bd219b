"""Study 21: robust aggregation against one malicious client of five, and its price when every
client is honest.

FedAvg FULL at the federated budget (FED: mnist5k, compact UNet, flow matching, 5 IID clients x
10 rounds x 20 local steps at batch 64), with each server rule of ``--aggregate`` in place of the
weighted average; client 3 sends, every round, 100x its update (``--attack scale:100@3``), its
update sign-flipped (``signflip:1@3``) or Gaussian noise in its place (``noise:0.05@3``; honest
updates move a weight by about 0.01 over a round here), or nothing is wrong (honest). Bulyan
needs n >= 4F + 3 = 7 reporters for F = 1, so its arms run 7 clients (one attacker of seven) and
are compared with FedAvg at 7 clients. FID on FED["n"] samples (Euler, 20 steps), SEEDS seeds.

    python experiments/s21_robust_aggregation.py          # every arm, then the result
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from common import FED, ROOT, SEEDS, cli, find_row, overall, save, summarise

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
#: FedAvg under attack is broken when its FID is this multiple of its honest FID; a rule holds
#: when its attacked FID is within HOLD of its own honest one, and is cheap when its honest FID
#: is within HOLD of FedAvg's.
BROKEN, HOLD = 1.5, 1.2


def arm(rule: str, attack: str, seed: int, clients: int) -> float:
    """FID of the global model of one federation (trained and scored once; resumable)."""
    name = f"{rule.replace(':', '').replace(',', '-')}-{attack}-c{clients}-s{seed}"
    run: Path = ROOT / "s21" / name
    f = FED
    extra: list[Any] = ["--attack", ATTACKS[attack]] if ATTACKS[attack] else []
    cli("fed", "run", run, "--data", f["data"], "--preset", f["preset"], "--clients", clients,
        "--split", "iid", "--method", "full", "--rounds", f["rounds"], "--local-steps",
        f["local_steps"], "--batch", f["batch"], "--seed", seed, "--objective", f["objective"],
        "--set", f"train.lr={f['lr']}", "--aggregate", rule, *extra, "--n", 0, "--quiet",
        study=STUDY)  # fmt: skip
    row = find_row(run, kind="fed_eval", n=f["n"])
    if row is None:
        cli("fed", "eval", run, "--n", f["n"], "--sample-steps", f["sample_steps"], "--seed",
            seed, "--quiet", study=STUDY)  # fmt: skip
        row = find_row(run, kind="fed_eval", n=f["n"])
    return float(row["fid"]["mean"])  # one model (FULL): its FID


def table(rules: tuple[str, ...], clients: int) -> dict[str, dict[str, dict[str, Any]]]:
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for rule in rules:
        out[rule] = {}
        for attack in ATTACKS:
            fids = [arm(rule, attack, s, clients) for s in SEEDS]
            out[rule][attack] = {"fid": summarise(fids), "per_seed": fids}
    return out


def checks_of(t: dict[str, dict[str, dict[str, Any]]]) -> dict[str, str]:
    def mean(rule: str, attack: str) -> float:
        return t[rule][attack]["fid"]["mean"]

    out: dict[str, str] = {}
    for attack in ATTACKS:
        if attack == "honest":
            continue
        broken = mean("fedavg", attack) > BROKEN * mean("fedavg", "honest")
        out[f"fedavg_degrades_under_{attack}"] = "held" if broken else "not held"
        for rule in t:
            if rule != "fedavg":
                ok = mean(rule, attack) <= HOLD * mean(rule, "honest")
                out[f"{rule}_holds_under_{attack}"] = "held" if ok else "not held"
    for rule in t:
        if rule != "fedavg":
            cheap = mean(rule, "honest") <= HOLD * mean("fedavg", "honest")
            out[f"{rule}_cheap_when_honest"] = "held" if cheap else "not held"
    return out


def main() -> None:
    five = table(RULES, FED["clients"])
    seven = table(BULYAN, 7)
    checks = {**checks_of(five), **{f"{k} (7 clients)": v for k, v in checks_of(seven).items()}}
    save(
        STUDY,
        {
            "claim": CLAIM,
            "setup": {
                **FED,
                "rules": list(RULES),
                "bulyan_clients": 7,
                "attacks": ATTACKS,
                "broken": BROKEN,
                "hold": HOLD,
                "seeds": list(SEEDS),
            },
            "five_clients": five,
            "seven_clients": seven,
            "checks": checks,
            "verdict": overall(checks),
        },
    )


if __name__ == "__main__":
    main()
