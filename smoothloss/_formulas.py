"""The loss formulas, written once: plain Python numbers and Array-API calls on arrays
handed in. Imports nothing from smoothloss and no framework.

Notation: K classes, ε = ``label_smoothing``. Every class gets ``off`` of the target
mass and the target class ``on``:

* ``convention="uniform"`` (PyTorch, timm, optax, Keras, Liger): off = ε/K, on = 1-ε+ε/K
* ``convention="others"`` (fairseq, t5x, Megatron): off = ε/(K-1), on = 1-ε

so q = off + (on - off)·t for a one-hot or soft t. With class weights w a position's
loss is ``ℓ = Σ_c w_c q_c (-log p_c)``; for an integer label y it is
``(on-off)·w_y·(-log p_y) + off·Σ_c w_c (-log p_c)`` (no K-wide target), and its
gradient is ``dℓ/dx = (Σ_c a_c)·softmax(x) - a`` with a_c = w_c q_c.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CONVENTIONS", "Options", "REDUCTIONS", "compute_dtype", "integer_grad_coefficients", "integer_loss",
    "mean_scale", "reduce", "smoothing_coefficients", "soft_cap", "soft_cap_grad", "xlogx",
]

REDUCTIONS = ("mean", "sum", "none")
CONVENTIONS = ("uniform", "others")


@dataclass(frozen=True)
class Options:
    """Validated, hashable options of one cross-entropy call (static under jit).

    ``axis`` is the class axis (normalised to be non-negative; -1 where the class axis
    is last by construction, as in the chunked and vocab-parallel losses).
    """

    axis: int
    label_smoothing: float
    convention: str
    ignore_index: int | None
    reduction: str
    z_loss: float
    softcap: float | None
    kl: bool


def smoothing_coefficients(label_smoothing: float, num_classes: int, convention: str) -> tuple[float, float]:
    """``(on, off)``: the smoothed probability of the target class and of every other class."""
    eps = label_smoothing
    if convention == "uniform":
        off = eps / num_classes
        return 1.0 - eps + off, off
    if num_classes < 2:
        raise ValueError(f"convention='others' needs K >= 2 classes, got K={num_classes}")
    return 1.0 - eps, eps / (num_classes - 1)


def xlogx(v: float) -> float:
    """``v·log v`` with ``0·log 0 = 0``."""
    return v * math.log(v) if v > 0 else 0.0


def compute_dtype(xp: Any, dtype: Any) -> Any:
    """float32 for 16-bit floats (accumulate in at least float32), else the dtype itself."""
    return xp.float32 if xp.finfo(dtype).bits < 32 else dtype


def soft_cap(xp: Any, x: Any, softcap: float | None) -> tuple[Any, Any]:
    """``(softcap·tanh(x/softcap), tanh(x/softcap))``, or ``(x, None)`` without a cap; the
    second is what :func:`soft_cap_grad` needs."""
    if softcap is None:
        return x, None
    capped = xp.tanh(x / softcap)
    return capped * softcap, capped


def soft_cap_grad(g: Any, capped: Any) -> Any:
    """The chain rule through the cap: ``g·(1 - tanh²(x/softcap))`` (``g`` without a cap)."""
    return g if capped is None else g * (1.0 - capped * capped)


def integer_loss(
    lse: Any, x_y: Any, sum_wx: Any, *, on: float, off: float, w_y: Any, sum_w: Any, kl: bool
) -> Any:
    """Each position's loss for integer labels, from row statistics only.

    ``ℓ = (on-off)·w_y·(lse - x_y) + off·(lse·Σ_c w_c - Σ_c w_c x_c) [+ Σ_c w_c q_c log q_c]``
    with ``lse`` the log-sum-exp, ``x_y`` the label's logit and ``sum_wx = Σ_c w_c x_c``
    (``Σ_c x_c`` and ``sum_w = K`` without weights; unused when off = 0). The statistics
    may come from one array or be reduced across shards of the classes.
    """
    hard = on - off
    factor = w_y * hard
    loss = lse - x_y
    if not (isinstance(factor, float) and factor == 1.0):
        loss = loss * factor
    if off:
        loss = loss + (lse * sum_w - sum_wx) * off
    if kl:  # + Σ_c w_c q_c log q_c, the negative entropy of q
        loss = loss + (w_y * (xlogx(on) - xlogx(off)) + sum_w * xlogx(off))
    return loss


def integer_grad_coefficients(
    lse: Any, s: Any, *, on: float, off: float, w_y: Any, sum_w: Any, z_loss: float
) -> tuple[Any, Any]:
    """``(row, on_mass)`` of the integer-label gradient with per-position cotangent s:
    ``dℓ/dx_c = row·softmax_c - s·off·w_c - [c = y]·on_mass``."""
    hard = on - off
    total = w_y * hard + sum_w * off
    coef = total + 2.0 * z_loss * lse if z_loss else total
    return coef * s, w_y * hard * s


def mean_scale(xp: Any, den: Any) -> Any:
    """1/den for a mean, and 0 when the denominator is exactly 0 (a mean over zero valid
    positions is 0, never NaN; any other denominator, negative weight sums included,
    divides as in PyTorch). ``den`` is a Python float or a 0-d array."""
    if isinstance(den, float):
        return 1.0 / den if den != 0 else 0.0
    nonzero = den != 0
    return xp.where(nonzero, 1.0 / xp.where(nonzero, den, 1.0), 0.0)


def reduce(xp: Any, loss: Any, reduction: str, den: Any = None) -> tuple[Any, Any]:
    """``(reduced, scale)``: the per-position ``loss`` reduced, and d(reduced)/d(position's
    loss). ``"mean"`` divides by ``den`` (default: the number of positions; 0 when it is
    0); ``"sum"`` and ``"none"`` have scale 1."""
    if reduction == "none":
        return loss, 1.0
    if reduction == "sum":
        return xp.sum(loss), 1.0
    scale = mean_scale(xp, float(math.prod(loss.shape)) if den is None else den)
    return xp.sum(loss) * scale, scale
