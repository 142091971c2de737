"""binary_cross_entropy: timm's BinaryCrossEntropy targets, Keras's smoothing towards 0.5,
PyTorch's weight / pos_weight, on every backend.

Expectations: a float64 NumPy formula written from the definition (``-log σ(x)`` as
``logaddexp(0, -x)``), and, where installed, torch's
``F.binary_cross_entropy_with_logits`` and Keras's ``BinaryCrossentropy`` side by side.
"""

from __future__ import annotations

import numpy as np
import pytest

import smoothloss
from smoothloss.backends import framework_name
from smoothloss.testing import rel_err


# ============================================================================ reference
def dense_targets(targets, K, eps, threshold=None):
    """timm: class indices → ε/K off, 1-ε+ε/K on; dense targets → t(1-ε)+ε/2 (Keras)."""
    targets = np.asarray(targets)
    if np.issubdtype(targets.dtype, np.integer) and targets.ndim == 1:
        t = np.full((len(targets), K), eps / K)
        t[np.arange(len(targets)), targets] = 1 - eps + eps / K
    else:
        t = targets.astype(np.float64) * (1 - eps) + eps / 2
    if threshold is not None:
        t = (t > threshold).astype(np.float64)
    return t


def reference_bce(x, t, weight=None, pos_weight=None, reduction="mean", sum_classes=False):
    """(loss, dloss/dx) in float64: ℓ = w·[-pw·t·log σ(x) - (1-t)·log(1-σ(x))]."""
    x = np.asarray(x, np.float64)
    pw = 1.0 if pos_weight is None else np.asarray(pos_weight, np.float64)
    w = 1.0 if weight is None else np.asarray(weight, np.float64)
    neg_log_sig = np.logaddexp(0.0, -x)  # -log σ(x)
    neg_log_one_minus = np.logaddexp(0.0, x)  # -log(1-σ(x))
    per = w * (pw * t * neg_log_sig + (1 - t) * neg_log_one_minus)
    sig = np.exp(-neg_log_sig)
    grad = np.broadcast_to(w * ((pw * t + 1 - t) * sig - pw * t), x.shape).copy()
    if sum_classes:
        per = per.sum(-1)
    if reduction == "none":
        return per, grad
    if reduction == "sum":
        return per.sum(), grad
    return per.mean(), grad / per.size


def _native(backend, out, like):
    assert framework_name(out) == framework_name(like)
    assert backend.device_of(out) == backend.device_of(like)


CASES = {
    "indices": dict(targets="indices", label_smoothing=0.1),
    "indices_weighted": dict(targets="indices", label_smoothing=0.2, weight="per_class", pos_weight="per_class"),
    "threshold": dict(targets="indices", label_smoothing=0.3, target_threshold=0.2, reduction="sum"),
    "soft": dict(targets="soft", label_smoothing=0.1, pos_weight=3.0, reduction="none"),
    "binary_int": dict(targets="binary_int", label_smoothing=0.2, weight="per_element"),
    "sum_classes": dict(targets="indices", label_smoothing=0.1, sum_classes=True),
    "sum_classes_none": dict(targets="soft", sum_classes=True, reduction="none", weight=2.0),
}


def _case(name, B=6, K=5, seed=0):
    spec = dict(CASES[name])
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(B, K)) * 3
    x[0, :2] = 0.0  # the kink of max(x, 0): the gradient must still be σ(0)·… exactly
    kind = spec.pop("targets")
    if kind == "indices":
        targets = rng.integers(0, K, B)
    elif kind == "soft":
        targets = rng.uniform(size=(B, K))
    else:
        targets = rng.integers(0, 2, (B, K))
    for key in ("weight", "pos_weight"):
        if spec.get(key) == "per_class":
            spec[key] = rng.uniform(0.5, 2.0, K)
        elif spec.get(key) == "per_element":
            spec[key] = rng.uniform(0.5, 2.0, (B, K))
    return x, targets, spec


@pytest.mark.parametrize("case", list(CASES))
def test_binary_cross_entropy_against_float64_formula(backend, case):
    x_np, t_np, spec = _case(case)
    eps = spec.get("label_smoothing", 0.0)
    t_ref = dense_targets(t_np, x_np.shape[-1], eps, spec.get("target_threshold"))
    ref_loss, ref_grad = reference_bce(
        x_np, t_ref, spec.get("weight"), spec.get("pos_weight"), spec.get("reduction", "mean"),
        spec.get("sum_classes", False),
    )
    x = backend.asarray(x_np, "float64")
    t = backend.asarray(t_np)
    options = {k: backend.asarray(v) if isinstance(v, np.ndarray) else v for k, v in spec.items()}

    def loss_fn(x, t):
        return smoothloss.binary_cross_entropy(x, t, **options)

    loss = backend.call(loss_fn, x, t)
    _native(backend, loss, x)
    assert backend.dtype_name(loss) == "float64"
    assert rel_err(backend.to_numpy(loss), ref_loss) <= 1e-13
    if backend.has_autodiff:
        (g,) = backend.grads(loss_fn, (x, t), (0,))
        assert rel_err(backend.to_numpy(g), ref_grad) <= 1e-13


def test_matches_torch_bce_with_logits_and_timm():
    """Side by side with torch: F.binary_cross_entropy_with_logits, and timm's
    BinaryCrossEntropy written out (dense targets from indices, threshold, sum_classes)."""
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    rng = np.random.default_rng(1)
    B, K = 8, 6
    x = torch.tensor(rng.normal(size=(B, K)) * 4, dtype=torch.float32, requires_grad=True)
    soft = torch.tensor(rng.uniform(size=(B, K)), dtype=torch.float32)
    y = torch.tensor(rng.integers(0, K, B))
    weight = torch.tensor(rng.uniform(0.5, 2, K), dtype=torch.float32)
    pos_weight = torch.tensor(rng.uniform(0.5, 3, K), dtype=torch.float32)

    def timm_bce(x, target, smoothing=0.1, target_threshold=None, weight=None, pos_weight=None,
                 reduction="mean", sum_classes=False):
        if target.shape != x.shape:
            off = smoothing / x.shape[-1]
            target = torch.full_like(x, off).scatter_(1, target.long().view(-1, 1), 1.0 - smoothing + off)
        if target_threshold is not None:
            target = target.gt(target_threshold).to(dtype=target.dtype)
        loss = F.binary_cross_entropy_with_logits(
            x, target, weight, pos_weight=pos_weight, reduction="none" if sum_classes else reduction
        )
        return loss.sum(-1).mean() if sum_classes else loss

    cases = [
        (dict(), soft, dict(reduction="mean")),
        (dict(weight=weight, pos_weight=pos_weight), soft, dict(reduction="sum")),
        (dict(label_smoothing=0.1, weight=weight, pos_weight=pos_weight), y,
         dict(smoothing=0.1, weight=weight, pos_weight=pos_weight)),
        (dict(label_smoothing=0.2, target_threshold=0.1), y, dict(smoothing=0.2, target_threshold=0.1)),
        (dict(label_smoothing=0.1, sum_classes=True, pos_weight=pos_weight), y,
         dict(smoothing=0.1, sum_classes=True, pos_weight=pos_weight)),
    ]
    for ours, target, theirs in cases:
        if target is y:
            expected = timm_bce(x, target, **theirs)
        else:
            expected = F.binary_cross_entropy_with_logits(
                x, target, ours.get("weight"), pos_weight=ours.get("pos_weight"), reduction=theirs["reduction"]
            )
            ours = dict(ours, reduction=theirs["reduction"])
        got = smoothloss.binary_cross_entropy(x, target, **ours)
        (g_exp,) = torch.autograd.grad(expected, [x])
        (g_got,) = torch.autograd.grad(got, [x])
        torch.testing.assert_close(got, expected, rtol=2e-6, atol=1e-6)
        torch.testing.assert_close(g_got, g_exp, rtol=2e-6, atol=1e-7)


def test_matches_keras_binary_crossentropy():
    """Keras BinaryCrossentropy(from_logits=True, label_smoothing=ε): soft targets → t(1-ε)+ε/2."""
    keras = pytest.importorskip("keras")
    rng = np.random.default_rng(2)
    x = (rng.normal(size=(7, 4)) * 3).astype(np.float32)
    t = rng.uniform(size=(7, 4)).astype(np.float32)
    hard = rng.integers(0, 2, (7, 4)).astype(np.float32)
    for eps in (0.0, 0.1, 0.4):
        for target in (t, hard):
            expected = keras.losses.BinaryCrossentropy(from_logits=True, label_smoothing=eps)(target, x)
            got = smoothloss.binary_cross_entropy(x, target, label_smoothing=eps)
            assert rel_err(got, np.asarray(expected)) <= 2e-6
            unreduced = keras.losses.BinaryCrossentropy(from_logits=True, label_smoothing=eps, reduction=None)
            per_example = unreduced(target, x)
            ours = smoothloss.binary_cross_entropy(x, target, label_smoothing=eps, reduction="none").mean(-1)
            assert rel_err(ours, np.asarray(per_example)) <= 2e-6


def test_large_logits_are_finite(backend):
    x_np = np.array([[1e4, -1e4, 1e4, -1e4, 0.0, 88.0, -88.0, 200.0]], np.float32)
    t_np = np.array([[0.0, 1.0, 1.0, 0.0, 0.5, 1.0, 1.0, 0.0]], np.float32)
    x, t = backend.asarray(x_np), backend.asarray(t_np)
    pw = backend.asarray(np.full(8, 2.0, np.float32))
    for options in (dict(), dict(pos_weight=pw), dict(label_smoothing=0.1)):
        def loss_fn(x, t):
            return smoothloss.binary_cross_entropy(x, t, reduction="none", **options)

        out = backend.to_numpy(backend.call(loss_fn, x, t))
        smoothed = dense_targets(t_np, 8, options.get("label_smoothing", 0.0))
        pos_weight = 2.0 if "pos_weight" in options else None
        ref, ref_grad = reference_bce(x_np, smoothed, pos_weight=pos_weight, reduction="none")
        assert np.all(np.isfinite(out))
        np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)
        if backend.has_autodiff:
            (g,) = backend.grads(loss_fn, (x, t), (0,))
            g = backend.to_numpy(g)
            assert np.all(np.isfinite(g))
            np.testing.assert_allclose(g, ref_grad, rtol=1e-6, atol=1e-7)
    # the wrong-sided extremes cost |x|, the right-sided ones nothing
    plain = backend.to_numpy(smoothloss.binary_cross_entropy(x, t, reduction="none"))[0]
    np.testing.assert_array_equal(plain[:4], [1e4, 1e4, 0.0, 0.0])


def test_16bit_logits_give_float32_loss(backend):
    dtype = "bfloat16" if backend.supports("bfloat16") else "float16"
    if not backend.supports(dtype) or backend.name == "array_api_strict":
        pytest.skip(f"{backend.name} has no 16-bit float")
    rng = np.random.default_rng(3)
    x_np = rng.normal(size=(4, 5)) * 3
    x = backend.asarray(x_np, dtype)
    y = backend.asarray(rng.integers(0, 5, 4))
    loss = smoothloss.binary_cross_entropy(x, y, label_smoothing=0.1)
    assert backend.dtype_name(loss) == "float32"
    ref, _ = reference_bce(backend.to_numpy(x).astype(np.float64), dense_targets(backend.to_numpy(y), 5, 0.1))
    assert rel_err(backend.to_numpy(loss), ref) <= 1e-5
    if backend.has_autodiff:
        (g,) = backend.grads(lambda x, y: smoothloss.binary_cross_entropy(x, y, label_smoothing=0.1), (x, y), (0,))
        assert backend.dtype_name(g) == dtype


def test_nan_propagates_and_empty_mean_is_zero(backend):
    x_np = np.zeros((2, 3), np.float32)
    x_np[0, 1] = np.nan
    out = backend.to_numpy(
        smoothloss.binary_cross_entropy(backend.asarray(x_np), backend.asarray(np.array([0, 2])), reduction="none")
    )
    assert np.isnan(out[0, 1]) and np.isfinite(out[1]).all() and np.isfinite(out[0, [0, 2]]).all()
    empty = smoothloss.binary_cross_entropy(
        backend.asarray(np.zeros((0, 3), np.float32)), backend.asarray(np.zeros(0, np.int64))
    )
    assert float(backend.to_numpy(empty)) == 0.0


def test_bad_binary_arguments(backend):
    x = backend.asarray(np.zeros((3, 4)), "float32")
    y = backend.asarray(np.array([0, 1, 2]))
    with pytest.raises(ValueError, match=r"label_smoothing must lie in \[0, 1\], got 1.5"):
        smoothloss.binary_cross_entropy(x, y, label_smoothing=1.5)
    with pytest.raises(ValueError, match="unknown reduction 'avg'"):
        smoothloss.binary_cross_entropy(x, y, reduction="avg")
    with pytest.raises(ValueError, match=r"\(3,\).*\(3, 4\).*\(2, 4\)"):
        smoothloss.binary_cross_entropy(x, backend.asarray(np.zeros((2, 4)), "float32"))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\)"):
        smoothloss.binary_cross_entropy(x, backend.asarray(np.array([0, 4, 1])))
    with pytest.raises(TypeError, match="floating dtype"):
        smoothloss.binary_cross_entropy(backend.asarray(np.zeros((3, 4), np.int64)), y)
    with pytest.raises(ValueError, match=r"weight of shape \(3,\) does not broadcast.*\(3, 4\)"):
        smoothloss.binary_cross_entropy(x, y, weight=backend.asarray(np.ones(3), "float32"))
    with pytest.raises(TypeError, match="target_threshold"):
        smoothloss.binary_cross_entropy(x, y, target_threshold="0.5")
