"""Routing specs of the DDM ensemble: parsing, validation and canonical names.

A routing says how :class:`~decentdiff.ddm.ensemble.EnsembleVelocity` mixes its experts (the
table in that module's docstring). :func:`parse_routing` turns a spec such as ``topk:2`` or
``schedule:0.5,top1`` into a validated :class:`Routing` whose ``str`` is the canonical spec;
:func:`split_routings` splits a comma-separated list of them (``compare --routing``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from decentdiff.errors import ConfigError

__all__ = ["PRIOR_KINDS", "ROUTING_FORMS", "Routing", "parse_routing", "split_routings"]

#: The valid routing specs, as listed in every routing error message.
ROUTING_FORMS = (
    "full, top1, topk:K, sample:K, threshold:P, nucleus:P, nucleus:P,T, oracle, mixture, "
    "sticky:P, schedule:T0,R (K an integer >= 1, 0 < P <= 1, T > 0, 0 < T0 < 1, R one of full, "
    "top1, topk:K, sample:K, threshold:P, nucleus:P[,T])"
)


#: Routings that need the cluster prior (a trajectory's expert is drawn from it).
PRIOR_KINDS = ("mixture", "sticky", "schedule")
#: Routings a ``schedule`` may use below its switch time.
_LOW_KINDS = ("full", "top1", "topk", "sample", "threshold", "nucleus")


def _bad(spec: object, why: str) -> ConfigError:
    return ConfigError(f"invalid routing {spec!s}: {why}; valid forms: {ROUTING_FORMS}")


def _num(x: float | None) -> str:
    """Shortest text that parses back to the same float ("0.9", "1", "0.1234567")."""
    text = repr(float(x))  # type: ignore[arg-type]
    return text[:-2] if text.endswith(".0") else text


@dataclass(frozen=True)
class Routing:
    """A parsed routing strategy.

    Attributes:
        kind: one of "full", "top1", "topk", "sample", "threshold", "nucleus", "oracle",
            "mixture", "sticky", "schedule".
        k: number of experts for topk / sample, else None.
        p: threshold for threshold, mass for nucleus, confidence for sticky, else None.
        temperature: softmax temperature for nucleus (1 otherwise).
        t0: switch time of schedule (mixture while t >= t0), else None.
        low: the routing schedule uses below t0, else None.
    """

    kind: str
    k: int | None = None
    p: float | None = None
    temperature: float = 1.0
    t0: float | None = None
    low: Routing | None = None

    def __post_init__(self) -> None:
        # Validate here too so a Routing built by hand is as safe as a parsed one.
        why = _problem(self.kind, self.k, self.p, self.temperature)
        if why is None:
            why = _schedule_problem(self.kind, self.t0, self.low)
        if why:
            raise _bad(repr(self), why)

    def __str__(self) -> str:
        """The canonical spec, e.g. "topk:2" or "nucleus:0.9,0.5" (parse_routing(str(r)) == r)."""
        if self.kind == "schedule":
            return f"schedule:{_num(self.t0)},{self.low}"
        if self.kind == "sticky":
            return f"sticky:{_num(self.p)}"
        if self.kind in ("topk", "sample"):
            return f"{self.kind}:{self.k}"
        if self.kind == "threshold":
            return f"threshold:{_num(self.p)}"
        if self.kind == "nucleus":
            return f"nucleus:{_num(self.p)}" + (
                "" if self.temperature == 1.0 else f",{_num(self.temperature)}"
            )
        return self.kind

    @property
    def stochastic(self) -> bool:
        """Whether the weights depend on the random generator."""
        return self.kind in ("sample", "nucleus", *PRIOR_KINDS)

    @property
    def needs_router(self) -> bool:
        """Whether the router is evaluated (mixture and oracle never call it)."""
        return self.kind not in ("oracle", "mixture")

    @property
    def needs_prior(self) -> bool:
        """Whether each trajectory's expert is drawn from the cluster prior."""
        return self.kind in PRIOR_KINDS

    @property
    def experts_per_step(self) -> int | None:
        """Experts evaluated per sample per step, at most (None: as many as the router gives
        weight; schedule: its routing's below T0, one expert above)."""
        if self.kind in ("top1", "nucleus", "oracle", "mixture", "sticky"):
            return 1
        if self.kind in ("topk", "sample"):
            return self.k
        if self.kind == "schedule":
            assert self.low is not None
            return self.low.experts_per_step
        return None


# Which parameters each strategy takes: the registry parse_routing and Routing validate against.
_ARITY: dict[str, tuple[str, ...]] = {
    "full": (),
    "top1": (),
    "topk": ("k",),
    "sample": ("k",),
    "threshold": ("p",),
    "nucleus": ("p", "T?"),
    "oracle": (),
    "mixture": (),
    "sticky": ("p",),
    "schedule": (),  # parsed by _parse_schedule (its second argument is a routing spec)
}


def _schedule_problem(kind: str, t0: object, low: object) -> str | None:
    """Why schedule's (t0, low) are invalid, or None; other kinds must not set them."""
    if kind != "schedule":
        return None if t0 is None and low is None else f"{kind} takes no switch time or routing"
    if not isinstance(t0, (int, float)) or isinstance(t0, bool) or not 0.0 < t0 < 1.0:
        return "the switch time T0 must satisfy 0 < T0 < 1"
    if not isinstance(low, Routing) or low.kind not in _LOW_KINDS:
        return f"below T0 the routing must be one of {', '.join(_LOW_KINDS)}"
    return None


def _parse_schedule(spec: str, rest: str) -> Routing:
    t0_text, sep, low_text = rest.partition(",")
    if not sep or not t0_text.strip() or not low_text.strip():
        raise _bad(repr(spec), "schedule takes a switch time and a routing, e.g. schedule:0.5,top1")
    try:
        t0 = float(t0_text)
    except ValueError:
        raise _bad(repr(spec), "the switch time T0 must be a number") from None
    low = parse_routing(low_text)
    why = _schedule_problem("schedule", t0, low)
    if why:
        raise _bad(repr(spec), why)
    return Routing("schedule", t0=t0, low=low)


def _problem(kind: str, k: object, p: object, temperature: object) -> str | None:
    """Why these routing parameters are invalid, or None when they are valid."""
    if kind not in _ARITY:
        return "unknown strategy"
    needs = _ARITY[kind]
    if "k" in needs:
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            return "k must be an integer >= 1"
    elif k is not None:
        return f"{kind} takes no k"
    if "p" in needs:
        if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0.0 < p <= 1.0:
            return "p must satisfy 0 < p <= 1"
    elif p is not None:
        return f"{kind} takes no p"
    if not isinstance(temperature, (int, float)) or not (
        math.isfinite(temperature) and temperature > 0
    ):
        return "temperature T must be > 0"
    if kind != "nucleus" and temperature != 1.0:
        return f"{kind} takes no temperature"
    return None


def parse_routing(spec: str | Routing) -> Routing:
    """Parse a routing spec such as "top1", "topk:2", "threshold:0.05" or "nucleus:0.9,0.5".

    Args:
        spec: the spec (case and surrounding spaces ignored), or an already parsed Routing.

    Returns:
        The validated :class:`Routing`.

    Raises:
        ConfigError: unknown form or out-of-range value; the one-line message lists the valid forms.
    """
    if isinstance(spec, Routing):
        return spec
    if not isinstance(spec, str):
        raise _bad(repr(spec), "expected a string")
    text = spec.strip().lower()
    kind, sep, rest = text.partition(":")
    kind = kind.strip()
    if kind not in _ARITY:
        raise _bad(repr(spec), "unknown strategy")
    if kind == "schedule":
        return _parse_schedule(spec, rest)
    args = [a.strip() for a in rest.split(",")] if sep else []
    needs = _ARITY[kind]
    required = [n for n in needs if not n.endswith("?")]
    if not (len(required) <= len(args) <= len(needs)) or any(a == "" for a in args):
        counts = {0: "no arguments", 1: "one argument", 2: "one or two arguments"}
        raise _bad(repr(spec), f"{kind} takes {counts[len(needs)]}")
    try:
        k = p = None
        temperature = 1.0
        if kind in ("topk", "sample"):
            if not args[0].isdigit():  # "2.0", "-1", "two": not an integer count
                raise _bad(repr(spec), "k must be an integer >= 1")
            k = int(args[0])
        elif kind in ("threshold", "nucleus", "sticky"):
            p = float(args[0])
            temperature = float(args[1]) if len(args) > 1 else 1.0
    except ValueError:
        raise _bad(repr(spec), "arguments must be numbers") from None
    why = _problem(kind, k, p, temperature)
    if why:
        raise _bad(repr(spec), why)
    return Routing(kind, k=k, p=p, temperature=temperature)


def split_routings(text: str) -> list[str]:
    """Split a comma-separated list of routing specs, keeping the commas inside a spec
    ("top1,nucleus:0.9,0.5,schedule:0.5,topk:2" -> top1, nucleus:0.9,0.5, schedule:0.5,topk:2).

    A piece that starts with a number continues the previous spec (nucleus's T), and so does the
    piece right after ``schedule:T0`` (its routing); every spec is validated.

    Raises:
        ConfigError: an empty list or an invalid spec.
    """
    specs: list[str] = []
    for piece in (x.strip() for x in text.split(",")):
        if not piece:
            continue
        name = piece.partition(":")[0].strip().lower()
        opens_low = (
            bool(specs) and specs[-1].lower().startswith("schedule:") and "," not in specs[-1]
        )
        numeric = name[:1].isdigit() or name[:1] in ".-+"
        if specs and (numeric or opens_low):
            specs[-1] += "," + piece
        else:
            specs.append(piece)
    if not specs:
        raise _bad(repr(text), "no routing given")
    for spec in specs:
        if spec.strip().lower() != "auto":  # resolved per RUN (ddm.load.resolve_routing)
            parse_routing(spec)
    return specs
