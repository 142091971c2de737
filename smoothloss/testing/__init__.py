"""The float64 reference that the test suite and ``python -m smoothloss check`` share.

Written plainly in NumPy and independently of the core: it builds the dense smoothed
target q position by position (no seed identity, no shifted logits, no Array API) and
sums ``-w_c q_c log p_c`` over the classes. Its gradient is the textbook
``(Σ_c w_c q_c)·softmax - w·q``; the suite checks it against central finite differences.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from smoothloss import _options

__all__ = [
    "composed_cross_entropy", "finite_difference_grad", "reference_cross_entropy", "reference_linear_cross_entropy",
    "rel_err", "tolerance",
]

# Relative tolerances by the dtype of the logits (SPEC; issue 2).
_TOLERANCE = {"float64": 1e-10, "float32": 1e-5, "float16": 1e-2, "bfloat16": 1e-2}


def tolerance(dtype_name: str) -> float:
    return _TOLERANCE[dtype_name]


def rel_err(actual: Any, expected: Any) -> float:
    """max|actual - expected| / max|expected| (NaNs in the same places compare equal)."""
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    if a.shape != e.shape:
        raise AssertionError(f"shape {a.shape} != expected {e.shape}")
    if a.size == 0:
        return 0.0
    nan_a, nan_e = np.isnan(a), np.isnan(e)
    if (nan_a != nan_e).any():
        return float("inf")
    a, e = np.where(nan_a, 0.0, a), np.where(nan_e, 0.0, e)
    scale = max(float(np.max(np.abs(e))), 1e-300)
    return float(np.max(np.abs(a - e))) / scale


def reference_cross_entropy(
    logits: Any, targets: Any, *, weight: Any = None, **options: Any
) -> tuple[np.ndarray, np.ndarray]:
    """(loss, dloss/dlogits) in float64, from the definition. NumPy arrays in and out.

    ``weight`` and ``options`` are :func:`smoothloss.cross_entropy`'s keywords (the declared option
    set's defaults for those not given; an unknown name is a TypeError)."""
    unknown = set(options) - set(_options.NAMES)
    if unknown:
        raise TypeError(f"reference_cross_entropy got unknown options {sorted(unknown)}")
    o = {**_options.defaults(), **options}
    axis, label_smoothing, convention = o["axis"], o["label_smoothing"], o["convention"]
    ignore_index, reduction, z_loss, softcap, kl = o["ignore_index"], o["reduction"], o["z_loss"], o["softcap"], o["kl"]
    x = np.moveaxis(np.asarray(logits, dtype=np.float64), axis, -1)
    targets = np.asarray(targets)
    K = x.shape[-1]
    eps = float(label_smoothing)
    w = np.ones(K) if weight is None else np.asarray(weight, dtype=np.float64)

    if softcap is not None:
        tanh = np.tanh(x / softcap)
        xc = softcap * tanh
    else:
        xc = x
    mx = np.max(xc, axis=-1, keepdims=True)
    lse = (mx + np.log(np.sum(np.exp(xc - mx), axis=-1, keepdims=True)))[..., 0]
    logp = xc - lse[..., None]
    softmax = np.exp(logp)

    integer = np.issubdtype(targets.dtype, np.integer)
    positions = x.shape[:-1]
    t = np.zeros(x.shape)
    valid = np.ones(positions, dtype=bool)
    if integer:
        for pos in np.ndindex(*positions):
            label = int(targets[pos])
            if ignore_index is not None and label == ignore_index:
                valid[pos] = False
                continue
            t[pos + (label,)] = 1.0
    else:
        t = np.moveaxis(targets.astype(np.float64), axis, -1)

    if convention == "uniform":
        q = (1.0 - eps) * t + eps / K
    elif convention == "others":
        q = (1.0 - eps) * t + eps * (1.0 - t) / (K - 1)
    else:
        raise ValueError(convention)

    a = w * q  # per-class target mass
    per = -np.sum(a * logp, axis=-1)
    if kl:
        qlogq = np.where(q > 0, q * np.log(np.where(q > 0, q, 1.0)), 0.0)
        per = per + np.sum(w * qlogq, axis=-1)
    per = per + z_loss * lse**2
    per = np.where(valid, per, 0.0)

    grad = (np.sum(a, axis=-1, keepdims=True) + 2.0 * z_loss * lse[..., None]) * softmax - a
    if softcap is not None:
        grad = grad * (1.0 - tanh**2)
    grad = np.where(valid[..., None], grad, 0.0)

    if reduction == "none":
        loss = per
    elif reduction == "sum":
        loss = np.sum(per)
    elif reduction == "mean":
        if integer:
            den = float(np.sum(np.where(valid, np.sum(w * t, axis=-1), 0.0)))
        else:
            den = float(np.prod(positions))
        loss = np.sum(per) / den if den > 0 else np.float64(0.0)
        grad = grad / den if den > 0 else grad * 0.0
    else:
        raise ValueError(reduction)
    return np.asarray(loss, dtype=np.float64), np.moveaxis(grad, -1, axis)


def reference_linear_cross_entropy(
    hidden: Any, weight: Any, bias: Any, labels: Any, **options: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(loss, d_hidden, d_weight, d_bias)`` of ``cross_entropy(hidden @ weight.T + bias,
    labels)`` for 2-D ``hidden``, from :func:`reference_cross_entropy` on the logits (the
    gradients of the sum of the row losses for ``"none"``)."""
    hidden, weight, bias = (np.asarray(a, dtype=np.float64) for a in (hidden, weight, bias))
    loss, G = reference_cross_entropy(hidden @ weight.T + bias, labels, **options)
    return loss, G @ weight, G.T @ hidden, G.sum(0)


def finite_difference_grad(
    fn: Any, x: np.ndarray, coords: list[tuple[int, ...]], step: float = 1e-6
) -> np.ndarray:
    """Central differences of the scalar ``fn`` at ``x`` (float64) along ``coords``."""
    out = []
    for c in coords:
        hi, lo = x.copy(), x.copy()
        hi[c] += step
        lo[c] -= step
        out.append((float(fn(hi)) - float(fn(lo))) / (2.0 * step))
    return np.asarray(out)


def composed_cross_entropy(logits: Any, targets: Any, *, weight: Any = None, **options: Any) -> Any:
    """The plain Array-API forward of :func:`smoothloss.cross_entropy`, without a
    registered gradient.

    Framework autodiff differentiates it op by op (keeping a B×K intermediate); the test
    suite uses it as the autodiff reference for the closed-form gradient.
    """
    from smoothloss import _core
    from smoothloss.backends import bind

    fw, (logits, targets, weight) = bind(logits, targets, weight)
    opts = _core.validate(fw, logits, targets, weight, **options)
    return _core.forward(fw, logits, targets, weight, opts)[0]
