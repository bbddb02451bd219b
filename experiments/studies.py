"""The one list of the reproduction study's studies: everything that names them derives from it.

``run_all.py`` runs them by number, ``report.py`` writes docs/reproduction.md grouped by area in
this order, and the tests check that every ``experiments/s<N>_*.py`` script is here (and every
entry has a script), and that every study has a reading and a body in the report.

A study's number is its id: the order the studies were run in, cited as "study 20" across the docs
and in the headings' anchors. Its reading (what the numbers say, written after reading them) is
Markdown in ``experiments/readings/<module>.md``, inserted by ``report.py`` as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

READINGS = Path(__file__).resolve().parent / "readings"

#: (key, heading, what the area's studies ask), in the order the document gives them.
AREAS = (
    (
        "ddm",
        "Decentralized Diffusion Models",
        "Isolated experts mixed by a router against the FLOP-matched monolith: whether they win, "
        "by which routing, with how many experts and which split, which architecture, a distilled "
        "student, and experts of different objectives.",
    ),
    (
        "federated",
        "Federated diffusion",
        "Federated averaging and its communication-saving variants against central training, "
        "and against DDM on the same data and FLOPs.",
    ),
    (
        "objectives",
        "Objectives and sampling",
        "How an ε- or v-model on the DDPM schedule samples deterministically, and the ε-network "
        "and loss that make it sample well.",
    ),
    (
        "natural",
        "Natural images",
        "Colour data clustered by content, and DDM on Tiny ImageNet.",
    ),
)


@dataclass(frozen=True)
class Study:
    number: int  # the id: "study 10", the heading's "10. ..."
    module: str  # experiments/<module>.py, docs/reproduction/<module>.json
    title: str  # the heading after "N. " (its anchor is cited: never change it)
    area: str  # a key of AREAS
    question: str  # the one question it answers
    justifies: str  # the default or claim it backs, and where that default lives

    @property
    def heading(self) -> str:
        return f"{self.number}. {self.title}"

    @property
    def reading(self) -> Path:
        return READINGS / f"{self.module}.md"


#: Grouped by area, each area in the order its questions build on each other.
STUDIES = (
    # --- DDM
    Study(
        1,
        "s1_ddm_vs_monolith",
        "DDM vs the FLOP-matched monolith",
        "ddm",
        "Do K isolated experts with the paper's top-1 routing beat the FLOP-matched monolith?",
        "Why top-1 is not the unconditional default (`ddm/defaults.py AUTO_ROUTING`); "
        "its cause is study 10's.",
    ),
    Study(
        10,
        "s10_routing_budgets",
        "(ours) Routing that beats the monolith: 3 budgets, 3 seeds",
        "ddm",
        "Which routing makes the ensemble beat the FLOP-matched monolith, and from what budget?",
        "`routing auto`: mixture unconditional, top1 class-conditional "
        "(`ddm/defaults.py AUTO_ROUTING`, `EVIDENCE`); README's DDM rows.",
    ),
    Study(
        2,
        "s2_routing_table",
        "The routing table (Table 1 analogue)",
        "ddm",
        "How do the paper's routing strategies rank by FID and cost here?",
        "Every routing stays selectable and comparable in one command "
        "(`ddm/routing.py ROUTING_FORMS`, `decentdiff compare`).",
    ),
    Study(
        9,
        "s9_router_budget",
        "(ours) A longer-trained router",
        "ddm",
        "Is the router's training length what holds top-1 back?",
        "No default: it rules out the router's training length as top-1's problem "
        "(`docs/routing.md`); the cause is study 10's.",
    ),
    Study(
        3,
        "s3_k_and_partition",
        "Number of experts and how the data is split",
        "ddm",
        "Does a k-means split beat random and label splits, and how many experts suit one budget?",
        "`partition --by kmeans` as the default (`cli/ddm.py partition`).",
    ),
    Study(
        14,
        "s14_dit_experts",
        "(ours) DDM with DiT experts",
        "ddm",
        "Does DDM's edge over the monolith carry over to DiT experts?",
        "DiT presets for experts (`models/registry.py PRESETS`); the UNet stays the default "
        "(`config.py ModelConfig.preset`).",
    ),
    Study(
        4,
        "s4_distillation",
        "Distillation at a quarter of the batch",
        "ddm",
        "Does a student distilled at a quarter of the batch match a monolith trained as long?",
        "No default: the 300-step miss that study 12 re-measures at a longer budget.",
    ),
    Study(
        12,
        "s12_distill_budget",
        "(ours) Distillation at a third of the FLOPs, trained teachers",
        "ddm",
        "Does a distilled student reach 1.1x the monolith's FID at a third of its FLOPs?",
        "`distill --init soup` as an option, `--teacher own` kept as the default "
        "(`cli/train.py distill`); README's distillation row (1.1x missed).",
    ),
    Study(
        5,
        "s5_heterogeneous",
        "Heterogeneous experts (epsilon + flow)",
        "ddm",
        "Do ε- and flow-experts mix without retraining once converted to velocities?",
        "Mixed-objective ensembles through one velocity conversion (`diffusion/paths.py`); "
        "the gap study 13 closes.",
    ),
    Study(
        13,
        "s13_heterogeneous_budget",
        "(ours) Heterogeneous experts at a longer budget",
        "ddm",
        "Is a 2 ε + 2 flow ensemble within 1.1x of a 4-flow ensemble at a longer budget?",
        "The ε-loss of `--objective ddpm` (`config.py ObjectiveConfig.AUTO`) and ancestral "
        "sampling of ensembles with an ε-expert (`diffusion/solvers.py AUTO_SOLVER`).",
    ),
    # --- federated
    Study(
        6,
        "s6_feddiffuse",
        "FedDiffuse: FULL, USPLIT, UDEC, ULATDEC x splits",
        "federated",
        "What do USPLIT, UDEC and ULATDEC save in bytes, and what does it cost in FID, by split?",
        "The parts each method exchanges and their byte counts "
        "(`federated/parts.py`, `decentdiff fed bytes`).",
    ),
    Study(
        7,
        "s7_feddm",
        "FedDM: FedProx and 8-bit updates",
        "federated",
        "Do 8-bit updates keep FID at a quarter of the uplink, and does FedProx help label skew?",
        "`fed run --quantize 8` as an option that costs no measurable FID; FedProx off by "
        "default (`federated/settings.py FedSettings.prox`).",
    ),
    Study(
        16,
        "s16_fed_recipe",
        "(ours) Federated averaging with the central recipe",
        "federated",
        "How close do FedAvg and UDEC's personal models come to central training on the same "
        "images?",
        "`fed run --recipe fedsgd` and `--recipe central` over `paper`; the default recipe "
        "`pooled` (`federated/recipes.py RECIPES`); README's federated rows.",
    ),
    Study(
        22,
        "s22_fed_default",
        "(ours) The README's first federated command at its defaults",
        "federated",
        "Does `fed run` with no recipe option (UDEC, dirichlet:0.5, 15 rounds) come within 3x "
        "the FID of the central monolith trained on the same images?",
        "The default recipe `pooled` (`federated/recipes.py DEFAULT_RECIPE`).",
    ),
    Study(
        21,
        "s21_robust_aggregation",
        "(ours) Robust aggregation against one malicious client",
        "federated",
        "When one client of five sends a scaled, sign-flipped or noise update, which server rule "
        "keeps the global model's FID, and what does each cost when every client is honest?",
        "`fed run --aggregate` stays `fedavg` by default, since a robust rule refuses `--dp` and "
        "`--secagg`; the rules are measured safe to turn on (`federated/robust.py`).",
    ),
    Study(
        23,
        "s23_fed_privacy",
        "(ours) The price of differential privacy",
        "federated",
        "What FID does client-level (ε, δ) differential privacy cost a federation of five "
        "clients, at ε 8 and 1 and at the noise where FID starts to move?",
        "No default: `fed run --dp` stays off (`federated/privacy.py`); docs/federated.md "
        "(differential privacy) says how many clients DP needs.",
    ),
    Study(
        25,
        "s25_fed_secagg",
        "(ours) Secure aggregation, and privacy with a bad silo",
        "federated",
        "What do SecAgg+ and SecAgg+ with client-side differential privacy cost a federation of "
        "five clients in FID, upload bytes and time per round; and does server-side DP's clip "
        "hold off a client that sends 100x its update?",
        "No default: `fed run --secagg` stays off; docs/federated.md (secure aggregation) quotes "
        "its measured bytes and time (`federated/secagg.py`).",
    ),
    Study(
        8,
        "s8_ddm_vs_federated",
        "DDM vs federated on the same data and FLOPs",
        "federated",
        "On the same data and FLOPs, do isolated experts match federated averaging?",
        "No default: the claim that isolated experts, with no traffic while training, come "
        "closer to central training than FedAvg at the same FLOPs.",
    ),
    # --- objectives and sampling
    Study(
        11,
        "s11_eps_sampling",
        "(ours) Sampling an epsilon-model deterministically",
        "objectives",
        "Can a plain ε-model be sampled by Euler within 1.3x of its best ancestral FID?",
        "`--solver auto` samples ε-models ancestrally (`diffusion/solvers.py AUTO_SOLVER`).",
    ),
    Study(
        15,
        "s15_vpred",
        "(ours) v-prediction sampled deterministically",
        "objectives",
        "Can a v-model on the DDPM schedule be sampled by Euler within 1.3x of ancestral?",
        '`--solver auto` samples v-models by Euler (`diffusion/solvers.py AUTO_SOLVER["vpred"]`).',
    ),
    Study(
        17,
        "s17_eps_skip",
        "(ours) An epsilon-network with a skip connection",
        "objectives",
        "Does a skip connection let an ε-model be sampled by Euler within 1.3x of ancestral?",
        "`objective.eps_param = skip`, the default of `--objective ddpm` "
        "(`config.py ObjectiveConfig.eps_param`).",
    ),
    Study(
        18,
        "s18_eps_flow_loss",
        "(ours) An epsilon-network on the flow-matching loss",
        "objectives",
        "Does the ε-model trained on flow matching's noise levels and weighting sample well, and "
        "is it a better model?",
        "`--objective ddpm`'s weighting velocity:100 and step_dist logit_normal "
        '(`config.py ObjectiveConfig.AUTO["ddpm"]`).',
    ),
    Study(
        24,
        "s24_guidance",
        "(ours) The guidance scale of a class-conditional model",
        "objectives",
        "Which classifier-free guidance scale gives a class-conditional model its lowest FID "
        "when the user names none: 1 (none), 2, 3 or 4?",
        "`sample.guidance`'s class-conditional default (`config.py CLASS_COND_GUIDANCE`), with "
        "study 20's guidance arms on Tiny ImageNet.",
    ),
    # --- natural images
    Study(
        19,
        "s19_content_clusters",
        "(ours) Clusters by content on natural images",
        "natural",
        "Do the FID Inception network's features cluster natural images by content better than "
        "pixel PCA?",
        "`partition --features auto`: Inception pool3 for colour or unlabelled data, pixel PCA "
        "for labelled grey images (`ddm/cluster.py partition_features`).",
    ),
    Study(
        20,
        "s20_tiny_imagenet",
        "DDM on Tiny ImageNet against the FLOP-matched monolith",
        "natural",
        "Does DDM beat the FLOP-matched monolith on natural images (Tiny ImageNet)?",
        "README's natural-images row and the advice for natural images in docs/ddm.md "
        "(whole-class clusters, mixture, a budget of several epochs).",
    ),
)

BY_MODULE = {s.module: s for s in STUDIES}


def by_number() -> list[Study]:
    """The studies in the order they were run (later ones reuse earlier ones' RUNs)."""
    return sorted(STUDIES, key=lambda s: s.number)


def in_area(area: str) -> list[Study]:
    return [s for s in STUDIES if s.area == area]
