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
from typing import Any

__all__ = [
    "compute_dtype", "integer_grad_coefficients", "integer_loss", "is_zero",
    "known_count", "mean_scale", "reduce", "shifted_nll", "smoothing_coefficients", "soft_cap", "soft_cap_grad",
    "xlogx",
]

def smoothing_coefficients(label_smoothing: float, num_classes: Any, convention: str) -> tuple[Any, Any]:
    """``(on, off)``: the smoothed probability of the target class and of every other class.

    ``num_classes`` is an int, or a floating 0-d array where K is known at run time only
    (then so are on and off when ε > 0); without smoothing they are always (1.0, 0.0)."""
    eps = label_smoothing
    if convention != "uniform" and isinstance(num_classes, (int, float)) and num_classes < 2:
        raise ValueError(f"convention='others' needs K >= 2 classes, got K={num_classes}")
    if is_zero(eps):
        return 1.0, 0.0
    if convention == "uniform":
        off = eps / num_classes
        return 1.0 - eps + off, off
    return 1.0 - eps, eps / (num_classes - 1)


def is_zero(v: Any) -> bool:
    """Whether ``v`` is the number 0 (a coefficient whose term is left out); an array
    (a run-time coefficient) is never treated as 0."""
    return isinstance(v, (int, float)) and v == 0


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
    nll_y: Any, sum_nll: Any, *, on: float, off: float, w_y: Any, sum_w: Any, kl: bool, scale: float = 1.0,
    add_scaled: Any = None,
) -> Any:
    """Each position's loss for integer labels, from row statistics only.

    ``ℓ = (on-off)·w_y·nll_y + off·sum_nll [+ Σ_c w_c q_c log q_c]`` with
    ``nll_y = lse - x_y`` (the label's negative log-probability) and
    ``sum_nll = Σ_c w_c (lse - x_c)`` (unused, and may be None, when off = 0). The caller
    computes both from logits shifted by the row maximum (see :func:`shifted_nll`), so that
    a large common offset of the logits neither cancels nor overflows. A term whose
    coefficient is exactly 0 is left out, so an infinite weight on a class that gets no
    target mass cannot make it NaN. ``scale`` multiplies ℓ, through its coefficients (a
    mean's 1/count, folded in by a caller that then only sums). ``add_scaled(a, b, c)``
    is ``a + b·c`` for a number c (a framework's one-op version; default: two ops).
    """
    hard = on - off
    factor = w_y * (hard * scale)
    loss = nll_y
    if not (isinstance(factor, float) and factor == 1.0):
        loss = loss * factor
    if not is_zero(off):
        loss = loss + sum_nll * (off * scale) if add_scaled is None else add_scaled(loss, sum_nll, off * scale)
    if kl:  # + Σ_c w_c q_c log q_c, the negative entropy of q (on, off are numbers here)
        neg_entropy = w_y * (xlogx(on) - xlogx(off))
        entropy_terms = neg_entropy + sum_w * xlogx(off) if off else neg_entropy
        loss = loss + (entropy_terms if scale == 1.0 else entropy_terms * scale)
    return loss


def shifted_nll(m: Any, lse_rel: Any, x: Any) -> Any:
    """``lse - x`` for logits ``x`` of a row with maximum (or any shift) ``m`` and
    ``lse_rel = log Σ_c exp(x_c - m)``: ``lse_rel + (m - x)``, exact to rounding at any
    common offset (``lse`` itself is never formed: at an offset of 10⁴ its float32
    rounding alone is 5·10⁻⁴)."""
    return lse_rel + (m - x)


def integer_grad_coefficients(
    lse: Any, s: Any, *, on: float, off: float, w_y: Any, sum_w: Any, z_loss: float
) -> tuple[Any, Any]:
    """``(row, on_mass)`` of the integer-label gradient with per-position cotangent s:
    ``dℓ/dx_c = row·softmax_c - s·off·w_c - [c = y]·on_mass``. ``lse`` is used by the
    z-loss only (None without it)."""
    hard = on - off
    total = w_y * hard if is_zero(off) else w_y * hard + sum_w * off
    coef = total if is_zero(z_loss) else total + 2.0 * z_loss * lse
    return coef * s, w_y * hard * s


def mean_scale(xp: Any, den: Any) -> Any:
    """1/den for a mean, and 0 when the denominator is exactly 0 (a mean over zero valid
    positions is 0, never NaN; any other denominator, negative weight sums included,
    divides as in PyTorch). ``den`` is a Python float or a 0-d array."""
    if isinstance(den, float):
        return 1.0 / den if den != 0 else 0.0
    nonzero = den != 0
    # 1 and 0 as arrays of den's dtype: NumPy before 2.0 widens a 0-d float32 array met
    # with a Python float to float64 (the standard's, and NumPy 2's, rule keeps float32)
    one, zero = xp.ones_like(den), xp.zeros_like(den)
    return xp.where(nonzero, one / xp.where(nonzero, den, one), zero)


def known_count(shape: Any) -> float | None:
    """The number of positions of ``shape`` as a Python float where it is known and
    non-zero, else None (a traced axis: unknown, or symbolic)."""
    if None in shape:
        return None
    count = float(math.prod(shape))
    return count if type(count) is float and count else None


def reduce(xp: Any, loss: Any, reduction: str, den: Any = None) -> tuple[Any, Any]:
    """``(reduced, scale)``: the per-position ``loss`` reduced, and d(reduced)/d(position's
    loss). ``"mean"`` divides by ``den`` (default: the number of positions; 0 when it is
    0); ``"sum"`` and ``"none"`` have scale 1."""
    if reduction == "none":
        return loss, 1.0
    if reduction == "sum":
        return xp.sum(loss), 1.0
    if den is None:
        count = known_count(loss.shape)
        if count is not None:  # one op
            return xp.mean(loss), 1.0 / count
        # the number of positions, counted at run time where a traced axis is unknown
        den = float(math.prod(loss.shape)) if None not in loss.shape else xp.sum(xp.ones_like(loss))
    scale = mean_scale(xp, den)
    return xp.sum(loss) * scale, scale
