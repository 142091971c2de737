"""Unusual and hostile inputs: each gives the right number or smoothloss's own clear error.

Label dtypes narrower than the class count, ``ignore_index`` compared as an integer
value, out-of-range labels (an error eagerly, NaN at that position when traced), infinite
and negative class weights, large common offsets of the logits, overflow with smoothing,
single-logit binary heads, infinities, NumPy scalars as options and lists as arrays, on
every backend id. The expectations are the float64 reference below, written from the
definition, or closed forms.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import smoothloss
import smoothloss.testing

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

INT_DTYPES = ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"]


# ----------------------------------------------------------------------------- reference
def reference(x, y, *, eps=0.0, weight=None, ignore_index=None, reduction="mean"):
    """(loss, dloss/dx) in float64 from the definition: q = (1-ε)·onehot + ε/K,
    ℓ = Σ_c w_c q_c (-log p_c) (0·(-log 0) = 0), the mean divides by Σ_valid w_y unless
    that is exactly 0 (then the mean is 0)."""
    with np.errstate(invalid="ignore", over="ignore"):  # -inf logits (masks): the where()s drop them
        return _reference(x, y, eps, weight, ignore_index, reduction)


def _reference(x, y, eps, weight, ignore_index, reduction):
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y).astype(np.int64)
    B, K = x.shape
    w = np.ones(K) if weight is None else np.asarray(weight, dtype=np.float64)
    per, grad, den = np.zeros(B), np.zeros((B, K)), 0.0
    for i in range(B):
        if ignore_index is not None and int(y[i]) == ignore_index:
            continue
        m = np.max(x[i])
        lse_rel = math.log(np.sum(np.exp(x[i] - m)))
        neg_log_p = lse_rel + (m - x[i])
        q = np.full(K, eps / K)
        q[y[i]] += 1.0 - eps
        a = np.where(q == 0.0, 0.0, w * q)
        per[i] = np.sum(np.where(a == 0.0, 0.0, a * neg_log_p))
        grad[i] = np.sum(a) * np.exp(-neg_log_p) - a
        den += w[y[i]]
    if reduction == "none":
        return per, grad
    if reduction == "sum":
        return np.sum(per), grad
    return (np.sum(per) / den, grad / den) if den != 0 else (0.0, grad * 0.0)


def close(actual, expected, rtol=2e-6, atol=2e-7):
    actual = np.asarray(actual, dtype=np.float64)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


def value_and_grad(backend, x, y, weight=None, **kw):
    """(loss, d sum(loss)/d logits) on the backend: its autodiff (traced where the backend
    traces), or the closed form of :func:`smoothloss.cross_entropy_and_grad` without one."""
    xs = backend.asarray(x)
    rest = (y,) if weight is None else (y, weight)

    def fn(logits, labels, *w):
        return smoothloss.cross_entropy(logits, labels, weight=w[0] if w else None, **kw)

    if backend.has_autodiff:
        out, g = backend.value_and_grad(fn, xs, *rest)
    else:
        out, g = smoothloss.cross_entropy_and_grad(xs, y, weight=weight, **kw)
    return backend.to_numpy(out), backend.to_numpy(g)


def labels_of(backend, values, dtype):
    if backend.name == "torch":
        torch = pytest.importorskip("torch")
        if not hasattr(torch, dtype):
            pytest.skip(f"this torch has no {dtype}")
    return backend.asarray(np.asarray(values, dtype=dtype))


def _wide_k(dtype):
    """A class count larger than the dtype can hold (for 8 and 16 bits), and labels near
    the top of the dtype's range."""
    info = np.iinfo(dtype)
    if info.bits <= 16:
        top = int(info.max)
        return top + 45, [5, top // 2, top]
    return 300, [5, 200, 299]


def _logits(B, K, seed=0, offset=0.0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(B, K)) + offset).astype(np.float32)


# ----------------------------------------------------------------------------- 1. label dtypes
@pytest.mark.parametrize("dtype", INT_DTYPES)
def test_label_dtype_gives_the_int64_numbers(backend, dtype):
    K, values = _wide_k(dtype)
    x = _logits(len(values), K, seed=1)
    y = labels_of(backend, values, dtype)
    loss, g = value_and_grad(backend, x, y, label_smoothing=0.1)
    ref_loss, ref_g = reference(x, values, eps=0.1)
    close(loss, ref_loss)
    close(g, ref_g, rtol=1e-5, atol=1e-8)
    # one hot class per row, at the label (a wrapped label would add a second)
    assert list(np.argmin(g, axis=-1)) == values and np.all(np.sort(g, axis=-1)[:, 1] > -0.1)


@pytest.mark.parametrize("dtype", INT_DTYPES)
def test_label_dtype_in_target_builders(backend, dtype):
    K, values = _wide_k(dtype)
    y = labels_of(backend, values, dtype)
    hot = backend.to_numpy(smoothloss.one_hot(y, K))
    expected = np.zeros((len(values), K))
    expected[np.arange(len(values)), values] = 1.0
    close(hot, expected, rtol=0, atol=0)

    eps = 0.2
    smooth = backend.to_numpy(smoothloss.smooth_labels(y, K, label_smoothing=eps))
    close(smooth, expected * (1 - eps) + eps / K, rtol=1e-6, atol=1e-9)

    lam = 0.7
    mixed = backend.to_numpy(smoothloss.mixup_target(y, K, lam=lam, label_smoothing=eps))
    q = expected * (1 - eps) + eps / K
    close(mixed, lam * q + (1 - lam) * q[::-1], rtol=1e-6, atol=1e-9)

    images = backend.asarray(np.ones((len(values), 3, 4, 4), dtype=np.float32))
    _, targets = smoothloss.Mixup(mixup_alpha=1.0, prob=1.0, num_classes=K, label_smoothing=0.0, seed=0)(images, y)
    targets = backend.to_numpy(targets)
    for i, row in enumerate(targets):  # mass only at the example's label and its partner's
        assert set(np.flatnonzero(row)) <= {values[i], values[-1 - i]}
        assert row.sum() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("dtype", INT_DTYPES)
def test_label_dtype_in_mixup_and_binary_losses(backend, dtype):
    K, values = _wide_k(dtype)
    x = _logits(len(values), K, seed=2)
    y = labels_of(backend, values, dtype)
    y64 = backend.asarray(np.asarray(values, dtype=np.int64))
    xs = backend.asarray(x)
    lam, eps = 0.6, 0.1

    def mixed(labels):
        return smoothloss.mixup_cross_entropy(xs, labels, lam=lam, label_smoothing=eps, reduction="none")

    per_own, _ = reference(x, values, eps=eps, reduction="none")
    per_partner, _ = reference(x, values[::-1], eps=eps, reduction="none")
    close(backend.to_numpy(mixed(y)), lam * per_own + (1 - lam) * per_partner, rtol=5e-6)

    def binary(labels):
        return smoothloss.binary_cross_entropy(xs, labels, label_smoothing=eps, reduction="sum")

    t = np.zeros((len(values), K))
    t[np.arange(len(values)), values] = 1.0
    t = t * (1 - eps) + eps / K
    x64 = x.astype(np.float64)
    expected = np.sum(np.maximum(x64, 0) - x64 * t + np.log1p(np.exp(-np.abs(x64))))
    close(backend.to_numpy(binary(y)), expected, rtol=5e-6)
    close(backend.to_numpy(binary(y)), backend.to_numpy(binary(y64)), rtol=1e-7)


@pytest.mark.parametrize("dtype", ["int8", "uint8", "int16", "uint16", "int32"])
def test_label_dtype_in_linear_cross_entropy(framework, dtype):
    K, values = _wide_k(dtype)
    K = min(K, 70000)
    rng = np.random.default_rng(3)
    h = rng.normal(size=(len(values), 8)).astype(np.float32)
    W = (rng.normal(size=(K, 8)) * 0.3).astype(np.float32)
    y = labels_of(framework, values, dtype)
    loss = framework.call(
        lambda a, b, c: smoothloss.linear_cross_entropy(a, b, c, label_smoothing=0.1, chunk_size=2),
        framework.asarray(h), framework.asarray(W), y,
    )
    ref_loss, _ = reference(h.astype(np.float64) @ W.T.astype(np.float64), values, eps=0.1)
    close(framework.to_numpy(loss), ref_loss, rtol=2e-5)


# ----------------------------------------------------------------------------- 2. ignore_index
def test_ignore_index_255_in_uint8_labels(backend):
    x = _logits(3, 5, seed=4)
    y = backend.asarray(np.array([255, 1, 3], dtype=np.uint8))
    loss, g = value_and_grad(backend, x, y, ignore_index=255, label_smoothing=0.1)
    ref_loss, ref_g = reference(x, [255, 1, 3], eps=0.1, ignore_index=255)
    close(loss, ref_loss)
    close(g, ref_g, rtol=1e-5, atol=1e-8)
    assert np.all(g[0] == 0)


@pytest.mark.parametrize("dtype,ignore_index", [("uint8", -100), ("int32", 2**40), ("int8", 300)])
def test_ignore_index_no_label_can_hold_ignores_nothing(backend, dtype, ignore_index):
    x = _logits(2, 5, seed=5)
    y = backend.asarray(np.array([3, 1], dtype=dtype))
    loss, g = value_and_grad(backend, x, y, ignore_index=ignore_index)
    ref_loss, ref_g = reference(x, [3, 1])
    close(loss, ref_loss)
    close(g, ref_g, rtol=1e-5, atol=1e-8)


def test_uint8_label_that_wraps_to_ignore_index_is_out_of_range(backend):
    # 156 is -100 wrapped to uint8: it must be treated as the label 156, out of [0, 5)
    x = _logits(2, 5, seed=6)
    y = backend.asarray(np.array([156, 1], dtype=np.uint8))
    _check_out_of_range(backend, x, y, bad_row=0, K=5, ignore_index=-100, good_labels=[None, 1])


def test_uint64_label_beyond_int64_is_out_of_range(backend):
    # 2**64 - 1 is -1 wrapped to uint64: never ignore_index=-1, never a class
    x = _logits(2, 5, seed=6)
    y = labels_of(backend, [2**64 - 1, 1], "uint64")
    _check_out_of_range(backend, x, y, bad_row=0, K=5, ignore_index=-1, good_labels=[None, 1])


# ----------------------------------------------------------------------------- 3. out of range
def _check_out_of_range(backend, x, y, bad_row, K, good_labels, **kw):
    if not backend.traced:
        with pytest.raises(ValueError, match=rf"labels must lie in \[0, {K}\)"):
            value_and_grad(backend, x, y, reduction="none", **kw)
        return
    error = backend.run_time_error()
    if error is not None:  # a graph assertion, at run time, naming the range
        with pytest.raises(error, match=rf"labels must lie in \[0, {K}\)"):
            value_and_grad(backend, x, y, reduction="none", **kw)
        return
    loss, g = value_and_grad(backend, x, y, reduction="none", **kw)
    assert np.isnan(loss[bad_row]) and np.all(np.isnan(g[bad_row]))
    good = [i for i in range(len(good_labels)) if i != bad_row]
    ref_loss, ref_g = reference(x[good], [good_labels[i] for i in good], reduction="none")
    close(loss[good], ref_loss)
    close(g[good], ref_g, rtol=1e-5, atol=1e-8)
    # the mean is NaN too: a bad label never gives a finite wrong number
    mean, _ = value_and_grad(backend, x, y, **kw)
    assert np.isnan(mean)


@pytest.mark.parametrize("bad", [-1, 5, 1000])
def test_out_of_range_label_raises_eagerly_and_is_nan_when_traced(backend, bad):
    x = _logits(3, 5, seed=7)
    y = backend.asarray(np.array([0, bad, 2]))
    _check_out_of_range(backend, x, y, bad_row=1, K=5, good_labels=[0, None, 2])


def test_eager_jax_transforms_check_concrete_labels():
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    x = jnp.asarray(_logits(2, 5, seed=8))
    for bad in (10, -1):
        labels = jnp.asarray([0, bad])
        with pytest.raises(ValueError, match=r"labels must lie in \[0, 5\)"):
            jax.value_and_grad(lambda a: smoothloss.cross_entropy(a, labels))(x)
        with pytest.raises(ValueError, match=r"labels must lie in \[0, 5\)"):
            jax.grad(lambda a: smoothloss.cross_entropy(a, labels, label_smoothing=0.1))(x)
        with pytest.raises(ValueError, match=r"labels must lie in \[0, 5\)"):
            jax.vmap(lambda a: smoothloss.cross_entropy(a, labels))(jnp.stack([x, x]))


def test_traced_linear_cross_entropy_out_of_range_label_is_nan(framework):
    if not framework.traced:
        pytest.skip("eager backends raise (tested above)")
    rng = np.random.default_rng(9)
    h, W = rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=(6, 4)).astype(np.float32)
    args = (framework.asarray(h), framework.asarray(W), framework.asarray(np.array([0, 9, 2])))
    fn = lambda a, b, c: smoothloss.linear_cross_entropy(a, b, c, reduction="none")  # noqa: E731
    error = framework.run_time_error()
    if error is not None:  # the framework's own run-time check (a graph assertion)
        with pytest.raises(error, match=r"labels must lie in \[0, 6\)"):
            framework.call(fn, *args)
        return
    loss = framework.to_numpy(framework.call(fn, *args))
    assert np.isnan(loss[1]) and np.all(np.isfinite(loss[[0, 2]]))


# ----------------------------------------------------------------------------- 4-5. weights
@pytest.mark.parametrize("value", [math.inf, math.nan])
def test_non_finite_weight_on_a_class_no_label_uses(backend, value):
    x = _logits(4, 5, seed=10)
    labels = [0, 2, 3, 0]
    weight = np.array([1.0, value, 2.0, 0.5, 1.0], dtype=np.float32)
    loss, g = value_and_grad(backend, x, backend.asarray(np.array(labels)), backend.asarray(weight))
    finite_w = np.where(np.isfinite(weight), weight, 0.0)
    ref_loss, ref_g = reference(x, labels, weight=finite_w)
    close(loss, ref_loss)
    close(g, ref_g, rtol=1e-5, atol=1e-8)


def test_negative_total_weight_divides_as_pytorch(backend):
    x = _logits(3, 5, seed=11)
    weight = np.array([-1.0, 1, 1, 1, 1], dtype=np.float32)
    y = backend.asarray(np.array([0, 0, 0]))
    loss, g = value_and_grad(backend, x, y, backend.asarray(weight))
    ref_loss, ref_g = reference(x, [0, 0, 0], weight=weight)
    assert ref_loss > 0  # Σ(-ℓ_i) / (-3): the plain mean of the unweighted losses
    close(loss, ref_loss)
    close(g, ref_g, rtol=1e-5, atol=1e-8)


def test_negative_total_weight_matches_torch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x = torch.tensor(_logits(3, 5, seed=11), requires_grad=True)
    w, y = torch.tensor([-1.0, 1, 1, 1, 1]), torch.tensor([0, 0, 0])
    ours = smoothloss.cross_entropy(x, y, weight=w)
    theirs = F.cross_entropy(x, y, weight=w)
    (g_ours,) = torch.autograd.grad(ours, x)
    (g_theirs,) = torch.autograd.grad(theirs, x)
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(g_ours, g_theirs)


def test_learnable_weight_with_masked_logits(framework):
    x = _logits(3, 4, seed=12)
    x[:, 2] = -np.inf  # a masked class no label uses
    labels = np.array([0, 1, 3])
    w = np.array([1.0, 2.0, 0.5, 1.5], dtype=np.float32)
    fn = lambda a, b, c: smoothloss.cross_entropy(a, b, weight=c)  # noqa: E731
    g_x, g_w = framework.grads(fn, (framework.asarray(x), framework.asarray(labels), framework.asarray(w)), (0, 2))
    g_x, g_w = framework.to_numpy(g_x), framework.to_numpy(g_w)
    # autodiff of L = Σ_i w_{y_i} ℓ_i / Σ_i w_{y_i}: dL/dw_c = Σ_{i: y_i = c} (ℓ_i - L) / Σ w_y
    per, _ = reference(x, labels, reduction="none")
    den = np.sum(w[labels])
    L = np.sum(w[labels] * per) / den
    expected = np.zeros(4)
    for i, c in enumerate(labels):
        expected[c] += (per[i] - L) / den
    assert np.all(np.isfinite(g_w)) and np.all(np.isfinite(g_x))
    close(g_w, expected, rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- 6-7, 9. extremes
@pytest.mark.parametrize("offset", [0.0, 1e4, 1e6, -1e6])
@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("weighted", [False, True])
def test_large_common_offset(backend, offset, eps, weighted):
    x = (np.array([[0.0, -5.0, -8.0], [1.0, 0.5, -2.0]]) + offset).astype(np.float32)
    weight = np.array([0.5, 2.0, 1.0], dtype=np.float32) if weighted else None
    y = np.array([0, 2])
    loss, g = value_and_grad(backend, x, backend.asarray(y), None if weight is None else backend.asarray(weight),
                             label_smoothing=eps)
    ref_loss, ref_g = reference(x, y, eps=eps, weight=weight)  # the float32 inputs, exactly
    close(loss, ref_loss, rtol=1e-6, atol=1e-8)
    close(g, ref_g, rtol=1e-5, atol=1e-7)
    assert np.all(np.abs(np.sum(g, axis=-1) - np.sum(ref_g, axis=-1)) < 1e-6)


@pytest.mark.parametrize("row,label,expected", [
    ([3e38, 3e38, 0.0], 0, None),
    ([1e38] * 8, 3, math.log(8)),
])
def test_overflow_with_smoothing_stays_finite(backend, row, label, expected):
    x = np.array([row], dtype=np.float32)
    loss, g = value_and_grad(backend, x, backend.asarray(np.array([label])), label_smoothing=0.1)
    ref_loss, ref_g = reference(x, [label], eps=0.1)
    if expected is not None:
        assert ref_loss == pytest.approx(expected)
    if not np.isfinite(ref_loss):  # the loss itself overflows float32's range: inf, never NaN
        assert loss == np.inf
        return
    assert np.isfinite(loss) and np.all(np.isfinite(g))
    close(loss, ref_loss, rtol=1e-6)
    close(g, ref_g, rtol=1e-5, atol=1e-7)


def test_overflow_with_smoothing_in_bfloat16(framework):
    x = np.array([[3e38, 3e38, 0.0]], dtype=np.float32)
    xs = framework.asarray(x, dtype="bfloat16")
    x_rounded = framework.to_numpy(xs)  # the bfloat16 values
    out = framework.call(lambda a, b: smoothloss.cross_entropy(a, b, label_smoothing=0.1), xs,
                         framework.asarray(np.array([0])))
    ref_loss, _ = reference(x_rounded, [0], eps=0.1)
    close(framework.to_numpy(out), ref_loss, rtol=1e-6)


def test_plus_infinity_logit_gives_nan(backend):
    x = np.array([[0.0, 1.0, np.inf]], dtype=np.float32)
    with np.errstate(invalid="ignore"):  # NumPy warns on inf - inf, as for its own arithmetic
        loss, g = value_and_grad(backend, x, backend.asarray(np.array([0])))
    assert np.isnan(loss) and np.any(np.isnan(g))


# ----------------------------------------------------------------------------- 8. binary heads
@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_single_logit_binary_head_takes_labels_as_targets(backend, eps):
    x = np.array([[0.5], [-1.0], [2.0], [0.0]], dtype=np.float32)
    labels = np.array([0, 1, 1, 0])
    out = backend.call(
        lambda a, b: smoothloss.binary_cross_entropy(a, b, label_smoothing=eps, reduction="none"),
        backend.asarray(x), backend.asarray(labels),
    )
    t = labels[:, None] * (1 - eps) + 0.5 * eps
    x64 = x.astype(np.float64)
    expected = np.maximum(x64, 0) - x64 * t + np.log1p(np.exp(-np.abs(x64)))
    close(backend.to_numpy(out), expected, rtol=1e-6)


def test_single_logit_binary_head_rejects_other_labels(backend):
    x = backend.asarray(np.zeros((3, 1), dtype=np.float32))
    y = backend.asarray(np.array([0, 2, 1]))
    fn = lambda a, b: smoothloss.binary_cross_entropy(a, b, reduction="none")  # noqa: E731
    if not backend.traced:
        with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
            backend.call(fn, x, y)
        return
    error = backend.run_time_error()
    if error is not None:
        with pytest.raises(error, match=r"labels must lie in \[0, 2\)"):
            backend.call(fn, x, y)
        return
    out = backend.to_numpy(backend.call(fn, x, y))
    assert np.isnan(out[1, 0]) and np.all(np.isfinite(out[[0, 2], 0]))


# ----------------------------------------------------------------------------- crashes, options
def test_numpy_bfloat16_is_a_clear_error():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    x = np.zeros((2, 3), dtype=ml_dtypes.bfloat16)
    with pytest.raises(TypeError, match="NumPy bfloat16 array .*cast them to float32"):
        smoothloss.cross_entropy(x, np.array([0, 1]))


@pytest.mark.parametrize("jit_compile", [False, True])
@pytest.mark.parametrize("kw", [{}, {"label_smoothing": 0.1}, {"label_smoothing": 0.2, "convention": "others",
                                                             "z_loss": 1e-3, "softcap": 5.0, "reduction": "none"}])
def test_tf_function_with_unknown_batch_and_class_count(jit_compile, kw):
    """``tf.TensorSpec([None, None])``: K is read at run time; value and gradients (logits
    and class weights) equal the float64 reference. ``kl=True`` needs K while tracing and
    says so."""
    tf = pytest.importorskip("tensorflow")
    sig = [tf.TensorSpec([None, None], tf.float32), tf.TensorSpec([None], tf.int64), tf.TensorSpec([None], tf.float32)]

    @tf.function(input_signature=sig, jit_compile=jit_compile)
    def step(a, b, c):
        with tf.GradientTape() as tape:
            tape.watch(a)
            loss = smoothloss.cross_entropy(a, b, weight=c, ignore_index=-100, **kw)
            total = tf.reduce_sum(loss)
        return loss, tape.gradient(total, a)

    x = _logits(4, 6, seed=13)
    y = np.array([0, 5, -100, 2])
    w = np.array([0.5, 1.0, 2.0, 1.5, 1.0, 0.7], dtype=np.float32)
    loss, g = step(tf.constant(x), tf.constant(y), tf.constant(w))
    ref = smoothloss.testing.reference_cross_entropy(x, y, weight=w, ignore_index=-100, **kw)
    close(loss.numpy(), ref[0], rtol=2e-6)
    close(g.numpy(), ref[1], rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="kl=True needs the size of the class axis"):
        tf.function(lambda a, b: smoothloss.cross_entropy(a, b, kl=True), input_signature=sig[:2])(
            tf.constant(x), tf.constant(np.array([0, 1, 2, 3])))


def test_jax_int32_labels_with_ignore_index_beyond_int32():
    jax = pytest.importorskip("jax")
    x = _logits(2, 5, seed=14)
    code_path = jax.numpy.asarray(np.array([3, 1], dtype=np.int32))
    loss = smoothloss.cross_entropy(jax.numpy.asarray(x), code_path, ignore_index=2**40)
    close(np.asarray(loss), reference(x, [3, 1])[0])


def test_numpy_scalars_as_options(backend):
    x = _logits(3, 4, seed=15)
    y = backend.asarray(np.array([0, 3, 1]))
    xs = backend.asarray(x)
    plain = backend.to_numpy(smoothloss.cross_entropy(xs, y, label_smoothing=0.1, axis=-1, ignore_index=3))
    numpy_scalars = backend.to_numpy(smoothloss.cross_entropy(
        xs, y, label_smoothing=np.float32(0.1), axis=np.int64(-1), ignore_index=np.int64(3),
        z_loss=np.float64(0.0),
    ))
    close(numpy_scalars, plain, rtol=1e-7)
    # a 0-d floating array is a varying option's value (a schedule's ε); other arrays are not options
    zero_d = backend.to_numpy(smoothloss.cross_entropy(xs, y, label_smoothing=np.array(0.1), axis=-1, ignore_index=3))
    close(zero_d, plain, rtol=1e-6)
    for bad in (dict(label_smoothing=np.array([0.1])), dict(label_smoothing=np.array(1)), dict(axis=np.array(-1)),
                dict(ignore_index=np.array(3)), dict(label_smoothing=np.bool_(True))):
        with pytest.raises(TypeError):
            smoothloss.cross_entropy(xs, y, **bad)


def test_torch_module_accepts_numpy_ignore_index():
    torch = pytest.importorskip("torch")
    import smoothloss.torch as st_torch

    loss = st_torch.CrossEntropyLoss(ignore_index=np.int64(-100), label_smoothing=np.float32(0.1))
    x, y = torch.tensor(_logits(2, 3, seed=16)), torch.tensor([0, 2])
    torch.testing.assert_close(loss(x, y), torch.nn.functional.cross_entropy(x, y, label_smoothing=0.1))


def test_python_list_targets_say_how_to_fix(backend):
    with pytest.raises(TypeError, match="list is not a supported array type; make it an array"):
        smoothloss.cross_entropy(backend.asarray(_logits(2, 3)), [0, 1])


# ----------------------------------------------------------------------------- hypothesis
EAGER_PROPERTY_BACKENDS = ["numpy", "torch", "jax", "tensorflow"]


@st.composite
def hostile_problems(draw):
    dtype = draw(st.sampled_from(INT_DTYPES))
    info = np.iinfo(dtype)
    K = draw(st.sampled_from([2, 5, 130, 300] + ([int(info.max) + 3] if info.bits == 8 else [])))
    B = draw(st.sampled_from([1, 3, 6]))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    top = min(K - 1, int(info.max))
    labels = rng.integers(0, top + 1, B)
    ignore = draw(st.sampled_from([None, -100, 255, 2**40, int(labels[0])]))
    offset = draw(st.sampled_from([0.0, 1e3, 1e5, -1e5]))
    logits = (rng.normal(scale=draw(st.sampled_from([0.5, 5.0])), size=(B, K)) + offset).astype(np.float32)
    kind = draw(st.sampled_from(["none", "positive", "zeros", "negative", "inf_unused"]))
    weight = None
    if kind != "none":
        weight = rng.uniform(0.2, 3.0, K).astype(np.float32)
        if kind == "zeros":
            weight[rng.integers(0, K, max(1, K // 3))] = 0.0
        elif kind == "negative":  # one negative class weight
            weight[rng.integers(0, K)] *= -1.0
        elif kind == "inf_unused":
            unused = np.setdiff1d(np.arange(K), labels)
            if unused.size:
                weight[unused[0]] = np.inf
    eps = 0.0 if kind == "inf_unused" else draw(st.sampled_from([0.0, 0.1, 0.5]))
    return logits, labels.astype(dtype), ignore, weight, eps


@pytest.mark.parametrize("name", EAGER_PROPERTY_BACKENDS)
@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(problem=hostile_problems())
def test_hostile_property(driver_for, name, problem):
    backend = driver_for(name)
    logits, labels, ignore, weight, eps = problem
    if name == "torch" and not hasattr(pytest.importorskip("torch"), str(labels.dtype)):
        pytest.skip(f"this torch has no {labels.dtype}")
    y64 = labels.astype(np.int64)
    if weight is not None:  # a mean whose denominator nearly cancels is ill-conditioned in any precision
        w_y = np.where(np.isfinite(weight), weight, 0.0)[y64]
        hypothesis.assume(abs(np.sum(w_y)) > 0.2 * np.sum(np.abs(w_y)) or not np.any(w_y))
    matches_ignore = ignore is not None and -(2**63) <= ignore < 2**63 and np.any(y64 == ignore)
    ref_loss, ref_g = reference(logits, y64, eps=eps, weight=None if weight is None else np.where(
        np.isfinite(weight), weight, 0.0), ignore_index=ignore if matches_ignore else None)
    loss, g = value_and_grad(
        backend, logits, backend.asarray(labels), None if weight is None else backend.asarray(weight),
        label_smoothing=eps, ignore_index=ignore,
    )
    scale = max(1.0, float(np.max(np.abs(ref_g))))
    close(loss, ref_loss, rtol=1e-5, atol=1e-6 * max(1.0, abs(float(ref_loss))))
    close(g, ref_g, rtol=1e-4, atol=1e-6 * scale)


def test_ignored_position_does_not_take_class_zero_weight(backend):
    # an ignored position must not pick up weight[0] (inf here) in its zero gradient row
    x = _logits(2, 3, seed=17)
    weight = np.array([np.inf, 2.0, 1.0], dtype=np.float32)
    y = backend.asarray(np.array([1, -100]))
    loss, g = value_and_grad(backend, x, y, backend.asarray(weight), ignore_index=-100)
    ref_loss, ref_g = reference(x, [1, -100], weight=np.array([0.0, 2.0, 1.0]), ignore_index=-100)
    close(loss, ref_loss)
    close(g, ref_g, rtol=1e-5, atol=1e-8)
    assert np.all(g[1] == 0)


# ----------------------------------------------------------------------------- repeated calls
# The checks on dtypes, shapes and options are kept per combination of them; a later call
# with the same combination must still have its own label values checked, its own
# ignore mask decided, and options equal in value but not in type refused.
def test_same_shapes_again_still_checks_the_labels(backend):
    x = _logits(3, 5, seed=18)
    xs = backend.asarray(x)
    for labels in ([0, 4, 2], [0, 5, 2], [1, 1, 1], [-1, 0, 0]):
        y = backend.asarray(np.array(labels))
        bad = [i for i, v in enumerate(labels) if not 0 <= v < 5]
        if bad:  # an error eagerly, NaN at that position when traced
            _check_out_of_range(backend, x, y, bad_row=bad[0], K=5,
                                good_labels=[None if i in bad else v for i, v in enumerate(labels)])
            continue
        loss, g = value_and_grad(backend, x, y, label_smoothing=0.1)
        ref_loss, ref_g = reference(x, labels, eps=0.1)
        close(loss, ref_loss)
        close(g, ref_g, rtol=1e-5, atol=1e-8)
    assert np.isfinite(backend.to_numpy(smoothloss.cross_entropy(xs, backend.asarray(np.array([0, 4, 2])))))


def test_same_shapes_again_decides_the_ignore_mask_each_time(backend):
    x = _logits(4, 3, seed=19)
    for labels in ([0, 1, 2, 1], [0, -100, 2, -100], [2, 2, 0, 1], [-100, -100, -100, -100], [1, 0, -100, 2]):
        y = backend.asarray(np.array(labels))
        loss, g = value_and_grad(backend, x, y, label_smoothing=0.2, ignore_index=-100)
        ref_loss, ref_g = reference(x, labels, eps=0.2, ignore_index=-100)
        close(loss, ref_loss)
        close(g, ref_g, rtol=1e-5, atol=1e-8)


def test_same_shapes_again_refuses_options_equal_in_value_only(backend):
    xs = backend.asarray(_logits(2, 4, seed=20))
    y = backend.asarray(np.array([0, 3]))
    smoothloss.cross_entropy(xs, y, label_smoothing=1, axis=1, ignore_index=0, kl=False, z_loss=0)
    for bad in (dict(label_smoothing=True), dict(axis=True), dict(ignore_index=False), dict(z_loss=False)):
        with pytest.raises(TypeError):
            smoothloss.cross_entropy(xs, y, **bad)
    with pytest.raises(ValueError, match="label_smoothing must lie in"):
        smoothloss.cross_entropy(xs, y, label_smoothing=1.5)
    # a valid call in between does not let the refused ones through later
    smoothloss.cross_entropy(xs, y, label_smoothing=1.0)
    with pytest.raises(TypeError):
        smoothloss.cross_entropy(xs, y, label_smoothing=True)
