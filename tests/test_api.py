"""Targets, edge cases, bad input and the import contract, on every backend."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import smoothloss
from smoothloss.testing import rel_err


def test_import_imports_no_framework():
    code = (
        "import sys, smoothloss, smoothloss.testing, smoothloss.testing.cases, smoothloss.testing.drivers;"
        "print(','.join(m for m in ('torch', 'jax', 'tensorflow', 'keras') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


# ----------------------------------------------------------------------------- targets
def test_one_hot_closed_form(backend):
    y = backend.asarray(np.array([[0, 2], [1, 1]]))
    out = smoothloss.one_hot(y, 3, on_value=0.9, off_value=0.05)
    expected = np.full((2, 2, 3), 0.05)
    expected[0, 0, 0] = expected[0, 1, 2] = expected[1, 0, 1] = expected[1, 1, 1] = 0.9
    assert out.shape == (2, 2, 3)
    assert rel_err(backend.to_numpy(out), expected) <= 1e-7
    moved = smoothloss.one_hot(y, 3, axis=0, dtype=backend.dtype("float64"))
    assert moved.shape == (3, 2, 2)
    assert backend.to_numpy(moved).dtype == np.float64


@pytest.mark.parametrize("convention", ["uniform", "others"])
def test_smooth_labels_closed_form(backend, convention):
    K, eps = 5, 0.2
    y = backend.asarray(np.array([3, 0]))
    out = backend.to_numpy(smoothloss.smooth_labels(y, K, label_smoothing=eps, convention=convention))
    on, off = (1 - eps + eps / K, eps / K) if convention == "uniform" else (1 - eps, eps / (K - 1))
    expected = np.full((2, K), off)
    expected[0, 3] = expected[1, 0] = on
    assert rel_err(out, expected) <= 1e-7
    np.testing.assert_allclose(out.sum(-1), 1.0, rtol=1e-6)
    # dense targets smooth the same way
    dense = backend.asarray(np.eye(K)[[3, 0]], "float64")
    out_dense = backend.to_numpy(smoothloss.smooth_labels(dense, label_smoothing=eps, convention=convention))
    assert rel_err(out_dense, expected) <= 1e-12


def test_integer_path_equals_dense_smoothed_path(backend):
    """The seed's identity: integer labels give the same loss as CE against smooth_labels."""
    rng = np.random.default_rng(0)
    x = backend.asarray(rng.normal(size=(6, 7)), "float64")
    y = backend.asarray(rng.integers(0, 7, 6))
    for convention in ("uniform", "others"):
        q = smoothloss.smooth_labels(y, 7, label_smoothing=0.3, convention=convention, dtype=backend.dtype("float64"))
        a = smoothloss.cross_entropy(x, y, label_smoothing=0.3, convention=convention, reduction="none")
        b = smoothloss.cross_entropy(x, q, reduction="none")
        assert rel_err(backend.to_numpy(a), backend.to_numpy(b)) <= 1e-12


def test_others_equals_uniform_with_rescaled_smoothing(backend):
    K, eps = 6, 0.3
    rng = np.random.default_rng(1)
    x = backend.asarray(rng.normal(size=(5, K)), "float64")
    y = backend.asarray(rng.integers(0, K, 5))
    a = smoothloss.cross_entropy(x, y, label_smoothing=eps, convention="others")
    b = smoothloss.cross_entropy(x, y, label_smoothing=eps * K / (K - 1))
    assert rel_err(backend.to_numpy(a), backend.to_numpy(b)) <= 1e-12


# ----------------------------------------------------------------------------- edge cases
def test_all_ignored_mean_is_zero(backend):
    x = backend.asarray(np.ones((3, 4)), "float32")
    y = backend.asarray(np.full(3, -1))
    loss, grad = smoothloss.cross_entropy_and_grad(x, y, ignore_index=-1, label_smoothing=0.1)
    assert float(backend.to_numpy(loss)) == 0.0
    assert not np.any(backend.to_numpy(grad))


@pytest.mark.parametrize("targets", ["int", "prob"])
def test_empty_batch_mean_is_zero(backend, targets):
    x = backend.asarray(np.zeros((0, 4)), "float32")
    t = backend.asarray(np.zeros(0, dtype=np.int64)) if targets == "int" else x
    loss, grad = smoothloss.cross_entropy_and_grad(x, t, label_smoothing=0.1)
    assert float(backend.to_numpy(loss)) == 0.0
    assert tuple(grad.shape) == (0, 4)
    assert tuple(smoothloss.cross_entropy(x, t, reduction="none").shape) == (0,)


def test_kl_minimum_is_zero_at_log_q(backend):
    K, eps = 4, 0.2
    q = np.full((3, K), eps / K)
    y = np.array([0, 3, 1])
    q[np.arange(3), y] += 1 - eps
    x = backend.asarray(np.log(q), "float64")
    loss = smoothloss.cross_entropy(x, backend.asarray(y), label_smoothing=eps, kl=True)
    assert abs(float(backend.to_numpy(loss))) <= 1e-14


def test_nan_logits_propagate(backend):
    x = np.zeros((2, 3))
    x[0, 1] = np.nan
    loss = smoothloss.cross_entropy(
        backend.asarray(x, "float32"), backend.asarray(np.array([0, 1])), reduction="none"
    )
    out = backend.to_numpy(loss)
    assert np.isnan(out[0]) and np.isfinite(out[1])


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_16bit_logits_give_float32_loss_and_16bit_grad(backend, dtype):
    """Accumulation in float32: the loss is float32 and within 1e-2 (in fact ~1e-6) of the
    float64 reference on the same rounded logits; the gradient keeps the 16-bit dtype."""
    if not backend.supports(dtype):
        pytest.skip(f"{backend.name} has no {dtype}")
    from smoothloss.testing import reference_cross_entropy

    rng = np.random.default_rng(2)
    x = backend.asarray(rng.normal(size=(4, 3, 50)) * 3, dtype)
    y = backend.asarray(rng.integers(0, 3, (4, 50)))
    opts = {"axis": 1, "label_smoothing": 0.1, "z_loss": 1e-3}
    if backend.has_autodiff:
        loss, grad = backend.value_and_grad(lambda x, y: smoothloss.cross_entropy(x, y, **opts), x, y)
    else:
        loss, grad = smoothloss.cross_entropy_and_grad(x, y, **opts)
    assert backend.dtype_name(loss) == "float32"
    assert backend.dtype_name(grad) == dtype
    ref, ref_grad = reference_cross_entropy(backend.to_numpy(x).astype(np.float64), backend.to_numpy(y), **opts)
    assert rel_err(backend.to_numpy(loss), ref) <= 1e-5
    assert rel_err(backend.to_numpy(grad), ref_grad) <= 1e-2


@pytest.mark.parametrize(
    "dtype, magnitude", [("float32", 1e4), ("float16", 6e4), ("bfloat16", 1e30)], ids=["f32", "f16", "bf16"]
)
def test_extreme_logits_give_finite_loss_and_grad(backend, dtype, magnitude):
    """Logits of ±1e4 (float32), ±60000 (float16), ±1e30 (bfloat16): no overflow."""
    if not backend.supports(dtype):
        pytest.skip(f"{backend.name} has no {dtype}")
    from smoothloss.testing import reference_cross_entropy

    rng = np.random.default_rng(5)
    logits = rng.choice([-magnitude, magnitude, 0.0], size=(6, 7))
    labels = rng.integers(0, 7, 6)
    x, y = backend.asarray(logits, dtype), backend.asarray(labels)
    for opts in ({"label_smoothing": 0.1}, {"label_smoothing": 0.2, "convention": "others", "kl": True}):
        loss, grad = smoothloss.cross_entropy_and_grad(x, y, **opts)
        loss, grad = backend.to_numpy(loss), backend.to_numpy(grad)
        assert np.isfinite(loss) and np.all(np.isfinite(grad))
        ref, _ = reference_cross_entropy(backend.to_numpy(x).astype(np.float64), labels, **opts)
        assert rel_err(loss, ref) <= 1e-5


# ----------------------------------------------------------------------------- bad input
def _xy(backend, K=4):
    rng = np.random.default_rng(3)
    return backend.asarray(rng.normal(size=(3, K)), "float32"), backend.asarray(rng.integers(0, K, 3))


@pytest.mark.parametrize(
    "kwargs, exc, words",
    [
        ({"label_smoothing": -0.1}, ValueError, "label_smoothing must lie in [0, 1], got -0.1"),
        ({"label_smoothing": 1.5}, ValueError, "got 1.5"),
        ({"reduction": "avg"}, ValueError, "unknown reduction 'avg'"),
        ({"convention": "fairseq"}, ValueError, "unknown convention 'fairseq'"),
        ({"z_loss": -1.0}, ValueError, "z_loss"),
        ({"softcap": 0.0}, ValueError, "softcap"),
        ({"axis": 2}, ValueError, "axis=2 is out of range"),
    ],
)
def test_bad_options(backend, kwargs, exc, words):
    x, y = _xy(backend)
    with pytest.raises(exc) as info:
        smoothloss.cross_entropy(x, y, **kwargs)
    assert words in str(info.value)


def test_labels_out_of_range(backend):
    x, _ = _xy(backend)
    with pytest.raises(ValueError, match=r"\[0, 4\).*\[4\]"):
        smoothloss.cross_entropy(x, backend.asarray(np.array([0, 4, 1])))
    with pytest.raises(ValueError, match=r"\[-3\]"):
        smoothloss.cross_entropy(x, backend.asarray(np.array([0, -3, 1])), ignore_index=-100)
    # the ignore_index itself is fine
    smoothloss.cross_entropy(x, backend.asarray(np.array([0, -100, 1])), ignore_index=-100)


def test_shape_mismatch_names_shapes(backend):
    x, _ = _xy(backend)
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(3,\).*\(4,\)"):
        smoothloss.cross_entropy(x, backend.asarray(np.array([0, 1, 2, 3])))
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(3, 5\)"):
        smoothloss.cross_entropy(x, backend.asarray(np.zeros((3, 5)), "float32"))


def test_integer_logits_rejected(backend):
    with pytest.raises(TypeError, match="floating dtype"):
        smoothloss.cross_entropy(backend.asarray(np.zeros((2, 3), dtype=np.int64)), backend.asarray(np.array([0, 1])))


def test_bool_targets_rejected(backend):
    x, _ = _xy(backend)
    with pytest.raises(TypeError, match="dtype"):
        smoothloss.cross_entropy(x, backend.asarray(np.array([True, False, True])))


def test_single_class_rejected(backend):
    with pytest.raises(ValueError, match="K=1"):
        smoothloss.cross_entropy(backend.asarray(np.zeros((2, 1)), "float32"), backend.asarray(np.array([0, 0])))


def test_weight_of_wrong_length(backend):
    x, y = _xy(backend)
    with pytest.raises(ValueError, match=r"shape \(4,\).*\(3,\)"):
        smoothloss.cross_entropy(x, y, weight=backend.asarray(np.ones(3), "float32"))


def test_ignore_index_with_probabilities_rejected(backend):
    x, _ = _xy(backend)
    with pytest.raises(ValueError, match="ignore_index"):
        smoothloss.cross_entropy(x, x, ignore_index=-100)


def test_numpy_mixes_as_the_framework_allows(framework):
    """NumPy labels and weights join a JAX or TensorFlow call as that framework's arrays
    (as optax and Keras accept them) and give the same numbers; PyTorch refuses them, as
    ``F.cross_entropy`` does."""
    x, y = _xy(framework)
    y_np, w_np = np.asarray(framework.to_numpy(y)), np.array([1.0, 2.0, 0.5, 1.5], np.float32)
    w = framework.asarray(w_np, "float32")

    def mixed(x):
        return smoothloss.cross_entropy(x, y_np, weight=w_np, label_smoothing=0.1)

    if framework.framework == "torch":
        with pytest.raises(TypeError, match=r"different frameworks.*numpy.*torch"):
            mixed(x)
        return
    got = framework.to_numpy(framework.call(mixed, x))
    want = framework.to_numpy(framework.call(
        lambda x, y, w: smoothloss.cross_entropy(x, y, weight=w, label_smoothing=0.1), x, y, w))
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_two_frameworks_rejected(framework, driver_for):
    """Arrays of two different frameworks raise a TypeError naming both."""
    pytest.importorskip("torch")
    x, y = _xy(framework)
    other = driver_for("jax" if framework.framework == "torch" else "torch")
    y_other = other.asarray(np.asarray(framework.to_numpy(y)))
    names = sorted({framework.framework, other.framework})
    with pytest.raises(TypeError, match=rf"different frameworks.*{names[0]}.*{names[1]}"):
        smoothloss.cross_entropy(x, y_other) if not framework.traced else framework.call(
            lambda x: smoothloss.cross_entropy(x, y_other), x)


def test_traced_call_skips_value_checks(framework):
    """Under jit/tf.function a bad label cannot be seen: the call compiles, no host sync."""
    if not framework.traced:
        pytest.skip("eager backend")
    x, _ = _xy(framework)
    y = framework.asarray(np.array([0, 1, 2]))
    out = framework.call(lambda x, y: smoothloss.cross_entropy(x, y, ignore_index=-100, label_smoothing=0.1), x, y)
    assert np.isfinite(framework.to_numpy(out))


def test_tensorflow_xla_jit_compile():
    """tf.function(jit_compile=True) compiles the loss and its registered gradient."""
    tf = pytest.importorskip("tensorflow")
    from smoothloss.testing import reference_cross_entropy

    rng = np.random.default_rng(4)
    x_np, y_np = rng.normal(size=(5, 3, 7)), rng.integers(0, 3, (5, 7))
    y_np[0, :2] = -100
    x, y = tf.constant(x_np), tf.constant(y_np)

    @tf.function(jit_compile=True)
    def step(x, y):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = smoothloss.cross_entropy(x, y, axis=1, label_smoothing=0.1, ignore_index=-100, z_loss=1e-3)
        return loss, tape.gradient(loss, x)

    loss, grad = step(x, y)
    ref_loss, ref_grad = reference_cross_entropy(
        x_np, y_np, axis=1, label_smoothing=0.1, ignore_index=-100, z_loss=1e-3
    )
    assert rel_err(loss.numpy(), ref_loss) <= 1e-10
    assert rel_err(grad.numpy(), ref_grad) <= 1e-10


def test_torch_custom_gradient_saves_no_class_sized_intermediate():
    """The autograd graph keeps the logits and O(positions) statistics, not a
    B×K log-softmax: the tensors saved for backward are the inputs plus lse and loss."""
    torch = pytest.importorskip("torch")
    x = torch.randn(64, 1000, requires_grad=True)
    y = torch.randint(0, 1000, (64,))
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = smoothloss.cross_entropy(x, y, label_smoothing=0.1)
    big = [t for t in saved if t.numel() >= x.numel()]
    assert len(big) == 1 and big[0].data_ptr() == x.data_ptr()  # only the logits themselves
    loss.backward()
    assert x.grad.shape == x.shape


def test_data_parallel_global_mean_pattern(backend):
    """docs/distributed.md: per-rank sums over the global valid count equal the
    single-process mean when ranks hold different amounts of padding."""
    rng = np.random.default_rng(7)
    logits, labels = rng.normal(size=(10, 5)), rng.integers(0, 5, 10)
    labels[[0, 1, 2, 7]] = -100  # rank 0 holds three padding tokens, rank 1 one
    opts = {"ignore_index": -100, "label_smoothing": 0.1}
    whole = float(backend.to_numpy(smoothloss.cross_entropy(
        backend.asarray(logits), backend.asarray(labels), **opts)))
    sums, counts = [], []
    for part in (slice(0, 7), slice(7, 10)):  # 4 and 2 valid tokens
        x, y = backend.asarray(logits[part]), backend.asarray(labels[part])
        sums.append(float(backend.to_numpy(smoothloss.cross_entropy(x, y, reduction="sum", **opts))))
        counts.append(int(np.sum(labels[part] != -100)))
    assert abs(sum(sums) / sum(counts) - whole) <= 1e-12
    naive = np.mean([s / c for s, c in zip(sums, counts)])
    assert abs(naive - whole) > 1e-3  # averaging per-rank means would be wrong here
