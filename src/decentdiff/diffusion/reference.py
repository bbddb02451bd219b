"""Closed-form velocity and cluster posteriors of a finite data set: the test oracle.

For a finite data set {x0_i}, i = 1..N, with the flow-matching path x_t = (1−t)·x0 + t·ε (t = 0
data, t = 1 noise), the noisy marginal is a mixture of N Gaussians with means (1−t)·x0_i and std t,
so the optimal model has a closed form. Source: PAPERS.md §1 (Decentralized Diffusion Models, arXiv
2501.05450, eq. for u_t as a mixture of per-cluster velocities weighted by p(k | x_t)).

Derivation (what :class:`EmpiricalFlow` computes). With a uniform prior over the points,

    log p(i | x_t = x) = ℓ_i(x) − logsumexp_j ℓ_j(x),   ℓ_i(x) = −||x − (1−t)·x0_i||² / (2t²).

Given x_t = x and x0 = x0_i the noise is determined: ε_i = (x − (1−t)·x0_i) / t, hence

    ε_i − x0_i = (x − (1−t)·x0_i − t·x0_i) / t = (x − x0_i) / t,
    u_t(x) = Σ_i p(i|x)·(ε_i − x0_i) = (x − x̂0(x)) / t,   x̂0(x) = Σ_i p(i|x)·x0_i.

Only the posterior mean x̂0 is needed, computed with a streaming (chunked) softmax so that neither
a (B, N, D) tensor nor, for huge N, a full (B, N) weight matrix has to exist at once. Everything
runs in float64; outputs come back in the input's dtype. ``t`` is clamped to ≥ :data:`T_MIN`
because u_t has a 1/t singularity at t = 0 (the posterior collapses onto the nearest point and ε is
undefined).

For a partition S_1..S_K of the points (cluster ids ``labels``), :class:`EmpiricalRouter`
returns the exact log-posterior
    log p(k | x_t) = logsumexp_{i in S_k} ℓ_i − logsumexp_i ℓ_i
(the prior |S_k|/N is included automatically), and :func:`cluster_velocities` the per-cluster
flows u^(k), so that Σ_k p(k|x_t)·u^(k)(x_t) = u_t(x_t) holds to rounding error.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from decentdiff.diffusion.paths import alpha, sigma
from decentdiff.errors import ConfigError

__all__ = [
    "T_MIN",
    "EmpiricalFlow",
    "EmpiricalRouter",
    "cluster_velocities",
]

#: Lower clamp for t: u_t = (x − x̂0)/t diverges at t = 0.
T_MIN = 1e-4

#: Default number of data points processed per chunk. With B = 64 a chunk costs
#: 64 × 4096 float64 = 2 MiB of kernel values, whatever N and the image size are.
DEFAULT_CHUNK = 4096


class _Kernels:
    """Data points in float64 plus the log-kernels ℓ_i(x) = −||x − (1−t)·x0_i||² / (2t²), by chunk.

    Args:
        data: (N, ...) data points x0_i (any dtype; scale uint8 images to [−1, 1] first).
        classes: (N,) long class labels restricting the posterior when ``cond`` is given, or None.
        chunk_size: number of points per chunk.
    """

    def __init__(self, data: Tensor, classes: Tensor | None, chunk_size: int) -> None:
        if data.ndim < 2 or data.shape[0] == 0:
            raise ConfigError(f"data must have shape (N, ...) with N >= 1, got {tuple(data.shape)}")
        if chunk_size < 1:
            raise ConfigError(f"chunk_size must be >= 1, got {chunk_size}")
        self.shape = tuple(data.shape[1:])
        self.flat = data.detach().reshape(data.shape[0], -1).to(torch.float64)  # (N, D)
        self.sq = (self.flat * self.flat).sum(1)  # (N,) ||x0_i||²
        self.chunk = int(chunk_size)
        self.classes: Tensor | None = None
        if classes is not None:
            classes = torch.as_tensor(classes).reshape(-1).to(torch.long)
            if classes.shape[0] != self.flat.shape[0]:
                raise ConfigError(
                    f"labels have {classes.shape[0]} entries but data has {self.n} points"
                )
            if classes.min() < 0:
                raise ConfigError("class labels must be >= 0")
            self.classes = classes.to(self.flat.device)

    @property
    def n(self) -> int:
        return self.flat.shape[0]

    def prepare(
        self, x: Tensor, t: Tensor | float, cond: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Flatten x to float64 (B, D), broadcast/clamp t to (B,), validate cond.

        Returns:
            xf: (B, D) float64; tc: (B,) float64 clamped t; cond: (B,) long or None (None
            whenever the data has no class labels: an unconditional model ignores its condition).
        """
        b = x.shape[0]
        if tuple(x.shape[1:]) != self.shape:
            raise ConfigError(f"x has sample shape {tuple(x.shape[1:])}, data has {self.shape}")
        dev = self.flat.device
        xf = x.detach().reshape(b, -1).to(device=dev, dtype=torch.float64)
        tc = torch.as_tensor(t, dtype=torch.float64, device=dev).reshape(-1)
        if tc.numel() == 1:
            tc = tc.expand(b)
        if tc.shape[0] != b:
            raise ConfigError(f"t must have shape ({b},), got {tuple(tc.shape)}")
        tc = tc.clamp(min=T_MIN)
        if cond is None or self.classes is None:
            return xf, tc, None
        cond = torch.as_tensor(cond, device=dev).reshape(-1).to(torch.long)
        if cond.shape[0] != b:
            raise ConfigError(f"cond must have shape ({b},), got {tuple(cond.shape)}")
        # A class without points has an undefined posterior; say so instead of returning NaN.
        present = torch.zeros(int(self.classes.max()) + 1, dtype=torch.bool, device=dev)
        present[self.classes] = True
        inside = (cond >= 0) & (cond < present.numel())
        ok = inside & present[cond.clamp(0, present.numel() - 1)]
        if not bool(ok.all()):
            missing = sorted(set(cond[~ok].tolist()))
            raise ConfigError(f"cond asks for classes {missing} that have no data points")
        return xf, tc, cond

    def chunks(self, xf: Tensor, tc: Tensor, cond: Tensor | None) -> Iterator[tuple[slice, Tensor]]:
        """Yield (points slice, log-kernels (B, n) float64) chunk by chunk.

        ℓ_i is computed from the expansion ||x||² − 2(1−t)⟨x, x0_i⟩ + (1−t)²||x0_i||² (one matmul,
        no (B, N, D) tensor); float64 keeps the cancellation harmless. Points of another class than
        ``cond`` get −inf.
        """
        s = alpha(tc)[:, None]  # (B, 1): x_t = α_t·x0 + σ_t·ε, kernel N(x_t; α_t x0_i, σ_t²)
        inv = (-0.5 / (sigma(tc) * sigma(tc)))[:, None]  # (B, 1)
        xsq = (xf * xf).sum(1, keepdim=True)  # (B, 1)
        for start in range(0, self.n, self.chunk):
            sl = slice(start, min(start + self.chunk, self.n))
            d2 = xsq - 2.0 * s * (xf @ self.flat[sl].T) + (s * s) * self.sq[sl][None, :]
            logk = d2.clamp(min=0.0) * inv  # (B, n)
            if cond is not None:
                assert self.classes is not None
                logk = logk.masked_fill(self.classes[sl][None, :] != cond[:, None], float("-inf"))
            yield sl, logk


def _finite_or_zero(m: Tensor) -> Tensor:
    # Running maxima start at −inf (and stay there while a row only saw masked points); shifting by
    # −inf would give inf − inf = NaN, shifting by 0 gives the intended exp(−inf) = 0.
    return torch.where(torch.isfinite(m), m, torch.zeros_like(m))


class EmpiricalFlow:
    """Exact marginal velocity u_t(x) = E[ε − x0 | x_t = x] of a finite data set.

    A velocity callable ``(x_t, t, cond=None) -> v`` (see the module docstring for the derivation).
    With ``labels`` given and ``cond`` passed, the posterior is restricted to the points of class
    ``cond[b]`` for each sample b: the exact class-conditional velocity. Without ``labels``,
    ``cond`` is ignored, as an unconditional network ignores it.

    Args:
        data: (N, ...) data points x0_i (e.g. images in [−1, 1], (N, C, H, W)).
        labels: (N,) long class labels, or None.
        chunk_size: points processed at a time (memory ≈ B × chunk_size float64).
    """

    def __init__(
        self, data: Tensor, labels: Tensor | None = None, *, chunk_size: int = DEFAULT_CHUNK
    ) -> None:
        self._k = _Kernels(data, labels, chunk_size)

    @property
    def num_points(self) -> int:
        """N, the number of data points."""
        return self._k.n

    def denoise(self, x: Tensor, t: Tensor | float, cond: Tensor | None = None) -> Tensor:
        """Posterior mean x̂0(x) = Σ_i p(i | x_t = x)·x0_i.

        Args:
            x: (B, ...) noisy samples x_t.
            t: (B,) times (or a scalar), clamped to ≥ T_MIN.
            cond: (B,) long class labels or None.

        Returns:
            (B, ...) x̂0 in x's dtype and device.
        """
        xf, tc, cond = self._k.prepare(x, t, cond)
        return self._x0_flat(xf, tc, cond).reshape(x.shape).to(device=x.device, dtype=x.dtype)

    def _x0_flat(self, xf: Tensor, tc: Tensor, cond: Tensor | None) -> Tensor:
        # Streaming softmax: keep a running max m, numerator acc = Σ e^{ℓ_i − m} x0_i and
        # denominator den = Σ e^{ℓ_i − m}, rescaled whenever m grows.
        b = xf.shape[0]
        m = torch.full((b, 1), float("-inf"), dtype=torch.float64, device=xf.device)
        acc = torch.zeros_like(xf)
        den = torch.zeros((b, 1), dtype=torch.float64, device=xf.device)
        for sl, logk in self._k.chunks(xf, tc, cond):
            m_new = torch.maximum(m, logk.max(1, keepdim=True).values)
            shift = _finite_or_zero(m_new)
            scale = torch.exp(m - shift)
            w = torch.exp(logk - shift)  # (B, n)
            acc = acc * scale + w @ self._k.flat[sl]
            den = den * scale + w.sum(1, keepdim=True)
            m = m_new
        return acc / den  # den ≥ 1: the maximising point contributes e^0

    def __call__(self, x: Tensor, t: Tensor | float, cond: Tensor | None = None) -> Tensor:
        """Velocity u_t(x) = (x − x̂0(x)) / t.

        Args:
            x: (B, ...) noisy samples x_t.
            t: (B,) times in [0, 1] (or a scalar), clamped to ≥ T_MIN.
            cond: (B,) long class labels or None.

        Returns:
            (B, ...) velocity in x's dtype and device.
        """
        xf, tc, cond = self._k.prepare(x, t, cond)
        v = (xf - self._x0_flat(xf, tc, cond)) / sigma(tc)[:, None]  # v = (x_t − x̂0)/σ_t
        return v.reshape(x.shape).to(device=x.device, dtype=x.dtype)

    def posterior(self, x: Tensor, t: Tensor | float, cond: Tensor | None = None) -> Tensor:
        """Per-point posterior p(i | x_t = x) (materialises (B, N): for small N, e.g. tests, plots).

        Returns:
            (B, N) float64, rows sum to 1.
        """
        xf, tc, cond = self._k.prepare(x, t, cond)
        logk = torch.cat([lk for _, lk in self._k.chunks(xf, tc, cond)], dim=1)
        return torch.softmax(logk, dim=1)


class EmpiricalRouter:
    """Exact cluster posterior log p(k | x_t) of a partitioned finite data set: the ideal router.

    A router callable ``(x_t, t, cond=None) -> logits (B, K)`` whose logits are normalised
    log-probabilities: log p(k | x) = logsumexp_{i∈S_k} ℓ_i(x) − logsumexp_i ℓ_i(x), which includes
    the prior |S_k|/N. An empty cluster gets logit −inf. With ``class_labels`` given and ``cond``
    passed, the posterior is conditioned on the class too (p(k | x_t, c)), matching
    class-conditional cluster flows.

    Args:
        data: (N, ...) data points.
        labels: (N,) long cluster ids in [0, K).
        num_parts: K; default labels.max() + 1.
        class_labels: (N,) long class labels for conditioning, or None.
        chunk_size: points processed at a time.
    """

    def __init__(
        self,
        data: Tensor,
        labels: Tensor,
        num_parts: int | None = None,
        *,
        class_labels: Tensor | None = None,
        chunk_size: int = DEFAULT_CHUNK,
    ) -> None:
        self._k = _Kernels(data, class_labels, chunk_size)
        self.labels = _check_parts(labels, self._k.n, num_parts).to(self._k.flat.device)
        self.num_parts = int(num_parts) if num_parts is not None else int(self.labels.max()) + 1

    def __call__(self, x: Tensor, t: Tensor | float, cond: Tensor | None = None) -> Tensor:
        """Log-posterior over clusters.

        Args:
            x: (B, ...) noisy samples x_t.
            t: (B,) times (or a scalar), clamped to ≥ T_MIN.
            cond: (B,) long class labels or None.

        Returns:
            (B, K) log p(k | x_t) in x's dtype (float64 inside); logsumexp over k is 0.
        """
        xf, tc, cond = self._k.prepare(x, t, cond)
        b, kk = xf.shape[0], self.num_parts
        # Per-cluster streaming logsumexp, with a running max per (sample, cluster) so that no
        # cluster underflows to −inf just because another cluster dominates.
        neg_inf = torch.full((b, kk), float("-inf"), dtype=torch.float64, device=xf.device)
        m = neg_inf
        s = torch.zeros((b, kk), dtype=torch.float64, device=xf.device)
        for sl, logk in self._k.chunks(xf, tc, cond):
            lab = self.labels[sl]
            cmax = neg_inf.scatter_reduce(1, lab.expand(b, -1), logk, reduce="amax")
            m_new = torch.maximum(m, cmax)
            shift = _finite_or_zero(m_new)
            s = s * torch.exp(m - shift)
            s = s.index_add(1, lab, torch.exp(logk - shift[:, lab]))
            m = m_new
        lse = torch.log(s) + _finite_or_zero(m)  # (B, K); −inf for empty clusters
        logp = lse - torch.logsumexp(lse, dim=1, keepdim=True)
        return logp.to(device=x.device, dtype=x.dtype if x.is_floating_point() else torch.float64)


def _check_parts(labels: Tensor, n: int, num_parts: int | None) -> Tensor:
    labels = torch.as_tensor(labels).reshape(-1)
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise ConfigError(f"cluster labels must be integers, got dtype {labels.dtype}")
    labels = labels.to(torch.long)
    if labels.shape[0] != n:
        raise ConfigError(f"labels have {labels.shape[0]} entries but data has {n} points")
    if labels.min() < 0:
        raise ConfigError("cluster labels must be >= 0")
    if num_parts is not None and (num_parts < 1 or labels.max() >= num_parts):
        raise ConfigError(
            f"cluster labels must lie in [0, {num_parts}), max is {int(labels.max())}"
        )
    return labels


def cluster_velocities(
    data: Tensor,
    labels: Tensor,
    num_parts: int | None = None,
    *,
    class_labels: Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK,
) -> list[EmpiricalFlow]:
    """One exact flow u^(k) per cluster: the ideal experts of a DDM.

    Args:
        data: (N, ...) data points.
        labels: (N,) long cluster ids in [0, K).
        num_parts: K; default labels.max() + 1.
        class_labels: (N,) long class labels; each cluster flow is then class-conditional.
        chunk_size: points processed at a time.

    Returns:
        K :class:`EmpiricalFlow` objects, one per cluster in order.

    Raises:
        ConfigError: a cluster is empty (its velocity is undefined).
    """
    labels = _check_parts(labels, data.shape[0], num_parts)
    k = int(num_parts) if num_parts is not None else int(labels.max()) + 1
    flows = []
    for c in range(k):
        idx = torch.nonzero(labels == c).reshape(-1)
        if idx.numel() == 0:
            raise ConfigError(f"cluster {c} is empty: its velocity is undefined")
        cls = None if class_labels is None else torch.as_tensor(class_labels).reshape(-1)[idx]
        flows.append(EmpiricalFlow(data[idx.to(data.device)], cls, chunk_size=chunk_size))
    return flows
