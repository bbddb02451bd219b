"""Routing defaults, in a module without heavy imports (the command line reads them for --help).

The choice is measured: docs/routing.md and the routing study of docs/reproduction.md.
"""

#: What ``sample``, ``eval``, ``demo`` and ``report`` use unless told otherwise: ``auto`` picks, per
#: RUN, the routing of :data:`AUTO_ROUTING` for its kind of model.
DEFAULT_ROUTING = "auto"

#: ``auto``: unconditional models make each image with ONE expert drawn from the cluster sizes
#: (``mixture``, no router call); class-conditional ones follow the router's top-1 expert, which
#: knows the class from the first step (``mixture`` when every class lies in one cluster:
#: :data:`WHOLE_CLASS_PARTITIONS`).
AUTO_ROUTING = {False: "mixture", True: "top1"}

#: The numbers behind AUTO_ROUTING, quoted by --help and the demo's summary: ensemble FID / the
#: FLOP-matched monolith's, mean of 3 seeds (docs/routing.md; 1,500 steps, tiny UNet).
EVIDENCE = (
    "measured (3 seeds, ensemble / FLOP-matched monolith FID): unconditional mixture 0.76x at "
    "K=4 and 0.66x at K=8 vs top1 1.04x / 1.62x; class-conditional top1 0.88x / 0.94x vs mixture "
    "0.98x / 0.98x"
)

#: What ``compare`` (and the demo) evaluates by default: both automatic choices and top-2.
DEFAULT_ROUTINGS = ("mixture", "top1", "topk:2")


#: Partitions that put every class in one cluster (``--by classes``, ``--by label``). For a
#: class-conditional model the cluster prior p(expert | class) is then one-hot, so ``mixture``
#: sends each class to the one expert trained on it, exactly, with no router call; top1 can only
#: match it, and sends a class to an expert that never saw it whenever the router errs.
WHOLE_CLASS_PARTITIONS = ("classes", "label")


def auto_routing(class_cond: bool, partition: str | None = None) -> str:
    """The routing ``auto`` stands for, for an unconditional or a class-conditional model
    (``partition``: the RUN's partition method, when known)."""
    if class_cond and partition in WHOLE_CLASS_PARTITIONS:
        return "mixture"
    return AUTO_ROUTING[bool(class_cond)]
