"""Run every study in order (each resumes where it stopped), then write docs/reproduction.md.

python experiments/run_all.py            # all of them
python experiments/run_all.py s1 s4      # some, by prefix
"""

from __future__ import annotations

import importlib
import sys
import time

STUDIES = (
    "s1_ddm_vs_monolith",
    "s2_routing_table",
    "s3_k_and_partition",
    "s4_distillation",
    "s5_heterogeneous",
    "s6_feddiffuse",
    "s7_feddm",
    "s8_ddm_vs_federated",
    "s9_router_budget",
    "s10_routing_budgets",
    "s11_eps_sampling",
    "s12_distill_budget",
    "s13_heterogeneous_budget",
    "s14_dit_experts",
    "s15_vpred",
    "s16_fed_recipe",
    "s17_eps_skip",
    "s18_eps_flow_loss",
    "s19_content_clusters",
    "s20_tiny_imagenet",
)


def main(argv: list[str]) -> int:
    chosen = [s for s in STUDIES if not argv or any(s.startswith(a) for a in argv)]
    for name in chosen:
        t = time.perf_counter()
        print(f"=== {name}", flush=True)
        importlib.import_module(name).main()
        print(f"=== {name} done in {time.perf_counter() - t:.0f} s", flush=True)
        importlib.import_module("report").main()  # the doc is current after every study
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
