"""Label-smoothed cross-entropy, written once against the Python Array API.

Notation: K classes, ε = ``label_smoothing``, x the logits of one position, s = x - max(x)
(the shifted logits), ``lse_s = log Σ_c exp(s_c)``, so -log p_c = lse_s - s_c.

Smoothed target: every class gets ``off`` and the target class ``on``:

* ``convention="uniform"`` (PyTorch, timm, optax, Keras, Liger): off = ε/K, on = 1-ε+ε/K
* ``convention="others"`` (fairseq, t5x, Megatron): off = ε/(K-1), on = 1-ε

so q = off + (on - off)·t for a one-hot or soft t. With class weights w the loss of a
position is ``ℓ = Σ_c w_c q_c (-log p_c)``; for an integer label y this is the seed's
identity ``ℓ = (on-off)·w_y·(-log p_y) + off·Σ_c w_c (-log p_c)``, computed without a
K-wide target. Its gradient is ``dℓ/dx = (Σ_c a_c)·softmax(x) - a`` with a_c = w_c q_c.
"""

from __future__ import annotations

import math
from typing import Any

from smoothloss import _validation as V
from smoothloss.backends import array_namespace, device, is_traced

__all__ = ["cross_entropy", "cross_entropy_and_grad", "smoothing_coefficients"]


def smoothing_coefficients(label_smoothing: float, num_classes: int, convention: str) -> tuple[float, float]:
    """``(on, off)``: the smoothed probability of the target class and of every other class."""
    eps = label_smoothing
    if convention == "uniform":
        off = eps / num_classes
        return 1.0 - eps + off, off
    if num_classes < 2:
        raise ValueError(f"convention='others' needs K >= 2 classes, got K={num_classes}")
    return 1.0 - eps, eps / (num_classes - 1)


def _xlogx(v: float) -> float:
    return v * math.log(v) if v > 0 else 0.0


def compute_dtype(xp: Any, dtype: Any) -> Any:
    """float32 for 16-bit floats (accumulate in at least float32), else the dtype itself."""
    return xp.float32 if xp.finfo(dtype).bits < 32 else dtype


def _cross_entropy(
    logits: Any,
    targets: Any,
    *,
    axis: int,
    label_smoothing: float,
    convention: str,
    weight: Any,
    ignore_index: int | None,
    reduction: str,
    z_loss: float,
    softcap: float | None,
    kl: bool,
    with_grad: bool,
) -> tuple[Any, Any]:
    """Shared body of :func:`cross_entropy` and :func:`cross_entropy_and_grad`."""
    xp = array_namespace(logits, targets, weight)
    eps = V.check_smoothing(label_smoothing)
    convention = V.check_choice("convention", convention, V.CONVENTIONS)
    reduction = V.check_choice("reduction", reduction, V.REDUCTIONS)
    z_loss = V.check_nonnegative(z_loss, "z_loss")
    softcap = V.check_softcap(softcap)
    V.check_logits(xp, logits)
    axis = V.normalize_axis(axis, logits.ndim)
    integer = V.check_targets(xp, logits, targets, axis)
    K = int(logits.shape[axis])
    V.check_num_classes(K, convention, eps)
    V.check_weight(xp, weight, K)
    if ignore_index is not None:
        if not integer:
            raise ValueError(
                "ignore_index applies to integer class targets only; probability targets "
                "have no class index to ignore (give such positions zero weight instead)"
            )
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
            raise TypeError(f"ignore_index must be None or an int, got {type(ignore_index).__name__}")
    if integer and not (is_traced(logits) or is_traced(targets)):
        V.check_label_values(xp, targets, K, ignore_index)

    in_dtype = logits.dtype
    cdtype = compute_dtype(xp, in_dtype)
    x = logits if cdtype == in_dtype else xp.astype(logits, cdtype)
    last = logits.ndim - 1
    if axis != last:
        x = xp.moveaxis(x, axis, -1)
    if softcap is not None:
        capped = xp.tanh(x / softcap)
        x = capped * softcap
    w = None if weight is None else xp.astype(weight, cdtype)
    on, off = smoothing_coefficients(eps, K, convention)
    hard = on - off

    m = xp.max(x, axis=-1, keepdims=True)
    shifted = x - m
    lse_s = xp.log(xp.sum(xp.exp(shifted), axis=-1))  # -log p_c = lse_s - shifted_c
    lse = None
    if z_loss:
        lse = m[..., 0] + lse_s

    valid = None
    w_y: Any = 1.0
    if integer:
        y = targets
        if ignore_index is not None:
            valid = y != ignore_index
            y = xp.where(valid, y, 0)
        shifted_y = xp.take_along_axis(shifted, xp.expand_dims(y, axis=-1), axis=-1)[..., 0]
        nll = lse_s - shifted_y
        if w is None:
            sum_w: Any = float(K)
            loss = nll * hard if hard != 1.0 else nll
        else:
            sum_w = xp.sum(w)
            w_y = xp.reshape(xp.take(w, xp.reshape(y, (-1,)), axis=0), y.shape)
            loss = nll * (w_y * hard)
        if off:
            if w is None:
                smooth = lse_s * float(K) - xp.sum(shifted, axis=-1)
            else:
                smooth = lse_s * sum_w - xp.matmul(shifted, w)
            loss = loss + smooth * off
        if kl:  # + Σ_c w_c q_c log q_c, the negative entropy of q
            loss = loss + (w_y * (_xlogx(on) - _xlogx(off)) + sum_w * _xlogx(off))
        mass = None  # per-class target mass a is built only for the gradient
    else:
        t = targets if targets.dtype == cdtype else xp.astype(targets, cdtype)
        if axis != last:
            t = xp.moveaxis(t, axis, -1)
        q = t if (hard == 1.0 and off == 0.0) else t * hard + off
        mass = q if w is None else q * w
        loss = xp.sum(mass * (xp.expand_dims(lse_s, axis=-1) - shifted), axis=-1)
        if kl:
            positive = q > 0
            log_q = xp.log(xp.where(positive, q, 1.0))
            loss = loss + xp.sum(xp.where(positive, mass * log_q, 0.0), axis=-1)
    if z_loss:
        loss = loss + z_loss * (lse * lse)
    if valid is not None:
        loss = xp.where(valid, loss, 0.0)

    # Reduction. `scale` is d(reduced loss)/d(per-position loss), used by the gradient.
    if reduction == "none":
        out, scale = loss, 1.0
    elif reduction == "sum":
        out, scale = xp.sum(loss), 1.0
    else:
        if integer and w is not None:
            den = xp.sum(w_y if valid is None else xp.where(valid, w_y, 0.0))
        elif valid is not None:
            den = xp.sum(xp.astype(valid, loss.dtype))
        else:
            den = float(math.prod(loss.shape))
        if isinstance(den, float):
            scale = 1.0 / den if den > 0 else 0.0
            out = xp.sum(loss) * scale
        else:  # a mean over zero valid positions is 0, never NaN
            nonzero = den > 0
            scale = xp.where(nonzero, 1.0 / xp.where(nonzero, den, 1.0), 0.0)
            out = xp.sum(loss) * scale

    if not with_grad:
        return out, None

    # Closed-form gradient: (Σ_c a_c + 2·z·lse)·softmax - a, times the reduction's scale.
    p = xp.exp(shifted - xp.expand_dims(lse_s, axis=-1))
    if integer:
        total = w_y * hard + sum_w * off if w is not None else hard + off * float(K)
        coef = total + 2.0 * z_loss * lse if z_loss else total
        g = p * (xp.expand_dims(coef, axis=-1) if not isinstance(coef, float) else coef)
        if off:
            g = g - (w * off if w is not None else off)
        classes = xp.arange(K, dtype=y.dtype, device=device(logits))
        hit = xp.expand_dims(y, axis=-1) == classes
        on_mass = xp.expand_dims(w_y * hard, axis=-1) if w is not None else hard
        g = xp.where(hit, g - on_mass, g)
    else:
        coef = xp.sum(mass, axis=-1)
        if z_loss:
            coef = coef + 2.0 * z_loss * lse
        g = p * xp.expand_dims(coef, axis=-1) - mass
    if valid is not None:
        scale = xp.astype(valid, g.dtype) * scale
    if isinstance(scale, float):
        if scale != 1.0:
            g = g * scale
    else:
        g = g * (xp.expand_dims(scale, axis=-1) if scale.ndim else scale)
    if softcap is not None:
        g = g * (1.0 - capped * capped)
    if axis != last:
        g = xp.moveaxis(g, -1, axis)
    if g.dtype != in_dtype:
        g = xp.astype(g, in_dtype)
    return out, g


def cross_entropy(
    logits: Any,
    targets: Any,
    *,
    axis: int = -1,
    label_smoothing: float = 0.0,
    convention: str = "uniform",
    weight: Any = None,
    ignore_index: int | None = None,
    reduction: str = "mean",
    z_loss: float = 0.0,
    softcap: float | None = None,
    kl: bool = False,
) -> Any:
    r"""Cross-entropy against label-smoothed targets, on any Array-API backend.

    With K classes and ε = ``label_smoothing`` the target distribution is
    ``q = off + (on - off)·t`` where t is the one-hot of an integer label (or the given
    probabilities), and ``(on, off) = (1-ε+ε/K, ε/K)`` for ``convention="uniform"`` or
    ``(1-ε, ε/(K-1))`` for ``convention="others"``. Each position's loss is

    ``ℓ = Σ_c w_c q_c (-log softmax(x)_c) + z_loss·lse(x)² [- Σ_c w_c q_c log q_c if kl]``

    For integer labels the K-wide target is never built:
    ``ℓ = (on-off)·w_y·(-log p_y) + off·Σ_c w_c (-log p_c)``.

    Args:
        logits: floating array; the classes lie along ``axis``. 16-bit logits are
            upcast to float32 inside; the loss is then float32.
        targets: integer class indices (logits' shape without ``axis``) or floating
            probabilities (logits' shape). Both are smoothed.
        axis: the class axis (1 for PyTorch's (N, C, d1, ...) layout).
        label_smoothing: ε in [0, 1].
        convention: ``"uniform"`` (ε/K to every class) or ``"others"`` (ε/(K-1) to
            every non-target class).
        weight: optional per-class weights of shape (K,), PyTorch semantics: the mean
            of integer targets divides by Σ_valid w_y, of probabilities by the number
            of positions.
        ignore_index: integer label whose positions contribute 0 and leave the mean's
            denominator. A mean over zero valid positions is 0.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (the logits' shape without ``axis``).
        z_loss: coefficient of the ``lse²`` penalty (PaLM, t5x), added per valid position.
        softcap: if given, ``logits ← softcap·tanh(logits/softcap)`` first (Gemma 2).
        kl: subtract the entropy of q, so the minimum is 0 (t5x).

    Returns:
        The loss, an array of the logits' namespace and device.

    Example:
        >>> import numpy as np, smoothloss
        >>> logits = np.array([[2.0, 0.5, -1.0]])
        >>> float(smoothloss.cross_entropy(logits, np.array([0]), label_smoothing=0.1))  # doctest: +ELLIPSIS
        0.3587...

    References:
        Szegedy et al., "Rethinking the Inception Architecture" (2016), section 7;
        PyTorch ``F.cross_entropy(label_smoothing=...)``; t5x ``compute_weighted_cross_entropy``.
    """
    out, _ = _cross_entropy(
        logits, targets, axis=axis, label_smoothing=label_smoothing, convention=convention,
        weight=weight, ignore_index=ignore_index, reduction=reduction, z_loss=z_loss,
        softcap=softcap, kl=kl, with_grad=False,
    )
    return out


def cross_entropy_and_grad(
    logits: Any,
    targets: Any,
    *,
    axis: int = -1,
    label_smoothing: float = 0.0,
    convention: str = "uniform",
    weight: Any = None,
    ignore_index: int | None = None,
    reduction: str = "mean",
    z_loss: float = 0.0,
    softcap: float | None = None,
    kl: bool = False,
) -> tuple[Any, Any]:
    r"""``(loss, dloss/dlogits)`` in one pass, the gradient in closed form.

    ``dℓ/dx = (Σ_c a_c + 2·z_loss·lse)·softmax(x) - a`` with the per-class target mass
    ``a_c = w_c q_c``, scaled by the reduction (1/denominator for ``"mean"``) and, with
    ``softcap``, by ``1 - tanh²(x/softcap)``. For ``reduction="none"`` the gradient is
    that of the sum of the per-position losses (each row's own gradient). The gradient
    has the logits' dtype and layout. Arguments as in :func:`cross_entropy`.

    Example:
        >>> import numpy as np, smoothloss
        >>> loss, g = smoothloss.cross_entropy_and_grad(np.zeros((1, 4)), np.array([2]))
        >>> g.tolist()
        [[0.25, 0.25, -0.75, 0.25]]
    """
    return _cross_entropy(
        logits, targets, axis=axis, label_smoothing=label_smoothing, convention=convention,
        weight=weight, ignore_index=ignore_index, reduction=reduction, z_loss=z_loss,
        softcap=softcap, kl=kl, with_grad=True,
    )
