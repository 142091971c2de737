"""Parity with the systems smoothloss replaces, each computed side by side.

PyTorch and optax and Keras are called directly; timm, fairseq and t5x are written out
here from their published definitions (timm does not import on the CI machine; fairseq
and t5x are not dependencies).
"""

from __future__ import annotations

import numpy as np
import pytest

import smoothloss
from smoothloss.testing import rel_err

F64 = 1e-10


def _logits(shape, seed=0, scale=2.0):
    return np.random.default_rng(seed).normal(scale=scale, size=shape)


# ----------------------------------------------------------------------------- torch
@pytest.fixture
def torch():
    return pytest.importorskip("torch")


@pytest.mark.parametrize("shape", [(8, 5), (4, 5, 3), (2, 7, 3, 2), (5,)], ids=["NC", "NCd", "NCdd", "C"])
@pytest.mark.parametrize("eps", [0.0, 0.1, 0.5])
@pytest.mark.parametrize("use_weight", [False, True], ids=["noweight", "weight"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_torch_cross_entropy_integer_targets(torch, shape, eps, use_weight, reduction):
    F = torch.nn.functional
    rng = np.random.default_rng(1)
    x = torch.tensor(_logits(shape), requires_grad=True)
    C = shape[0] if len(shape) == 1 else shape[1]
    label_shape = () if len(shape) == 1 else (shape[0],) + shape[2:]
    y = rng.integers(0, C, size=label_shape)
    if label_shape:
        y.flat[::3] = -100  # torch's default ignore_index
    y = torch.tensor(y)
    w = torch.tensor(rng.uniform(0.5, 2.0, size=C)) if use_weight else None
    expected = F.cross_entropy(x, y, weight=w, label_smoothing=eps, reduction=reduction)
    (g_expected,) = torch.autograd.grad(expected.sum(), x)
    axis = 0 if len(shape) == 1 else 1
    actual = smoothloss.cross_entropy(
        x, y, axis=axis, weight=w, label_smoothing=eps, ignore_index=-100, reduction=reduction
    )
    (g_actual,) = torch.autograd.grad(actual.sum(), x)
    assert actual.dtype == torch.float64 and actual.shape == expected.shape
    assert rel_err(actual.detach(), expected.detach()) <= F64
    assert rel_err(g_actual, g_expected) <= F64


@pytest.mark.parametrize("shape", [(8, 5), (4, 5, 3)], ids=["NC", "NCd"])
@pytest.mark.parametrize("eps", [0.0, 0.2])
@pytest.mark.parametrize("use_weight", [False, True], ids=["noweight", "weight"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_torch_cross_entropy_probability_targets(torch, shape, eps, use_weight, reduction):
    F = torch.nn.functional
    rng = np.random.default_rng(2)
    x = torch.tensor(_logits(shape), requires_grad=True)
    t = torch.softmax(torch.tensor(rng.normal(size=shape)), dim=1)
    w = torch.tensor(rng.uniform(0.5, 2.0, size=shape[1])) if use_weight else None
    expected = F.cross_entropy(x, t, weight=w, label_smoothing=eps, reduction=reduction)
    (g_expected,) = torch.autograd.grad(expected.sum(), x)
    actual = smoothloss.cross_entropy(x, t, axis=1, weight=w, label_smoothing=eps, reduction=reduction)
    (g_actual,) = torch.autograd.grad(actual.sum(), x)
    assert rel_err(actual.detach(), expected.detach()) <= F64
    assert rel_err(g_actual, g_expected) <= F64


def test_torch_all_ignored_mean_is_zero_not_nan(torch):
    """A deliberate difference: torch gives 0/0 = NaN (pytorch issue 116349)."""
    x = torch.tensor(_logits((3, 4)), requires_grad=True)
    y = torch.full((3,), -100)
    assert torch.isnan(torch.nn.functional.cross_entropy(x, y, label_smoothing=0.1))
    loss = smoothloss.cross_entropy(x, y, ignore_index=-100, label_smoothing=0.1)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(x.grad, torch.zeros_like(x))


@pytest.mark.parametrize("eps", [0.1, 0.3])
def test_timm_label_smoothing_cross_entropy_formula(torch, eps):
    """timm LabelSmoothingCrossEntropy: confidence·nll + ε·mean_c(-log p_c), then mean."""
    x = torch.tensor(_logits((16, 10)), requires_grad=True)
    y = torch.tensor(np.random.default_rng(3).integers(0, 10, 16))
    logprobs = torch.log_softmax(x, dim=-1)
    nll = -logprobs.gather(dim=-1, index=y.unsqueeze(1)).squeeze(1)
    smooth = -logprobs.mean(dim=-1)
    expected = ((1.0 - eps) * nll + eps * smooth).mean()
    (g_expected,) = torch.autograd.grad(expected, x)
    actual = smoothloss.cross_entropy(x, y, label_smoothing=eps)
    (g_actual,) = torch.autograd.grad(actual, x)
    assert rel_err(actual.detach(), expected.detach()) <= F64
    assert rel_err(g_actual, g_expected) <= F64


def test_timm_soft_target_cross_entropy_formula(torch):
    """timm SoftTargetCrossEntropy: sum(-t · log_softmax(x), -1).mean()."""
    x = torch.tensor(_logits((16, 10)), requires_grad=True)
    t = torch.softmax(torch.tensor(_logits((16, 10), seed=4)), dim=-1)
    expected = torch.sum(-t * torch.log_softmax(x, dim=-1), dim=-1).mean()
    actual = smoothloss.cross_entropy(x, t)
    assert rel_err(actual.detach(), expected.detach()) <= F64


# ----------------------------------------------------------------------------- fairseq / t5x
@pytest.mark.parametrize("eps", [0.1, 0.25])
def test_fairseq_label_smoothed_nll_loss_formula(eps):
    """fairseq: (1-ε-ε_i)·nll + ε_i·Σ_c(-log p_c), ε_i = ε/(K-1), pad positions zeroed, summed."""
    K, pad = 7, 1
    rng = np.random.default_rng(5)
    x = _logits((20, K), seed=5)
    y = rng.integers(0, K, 20)
    lprobs = x - np.log(np.exp(x).sum(-1, keepdims=True))
    nll = -lprobs[np.arange(20), y]
    smooth = -lprobs.sum(-1)
    pad_mask = y == pad
    nll[pad_mask] = 0.0
    smooth[pad_mask] = 0.0
    eps_i = eps / (K - 1)
    expected = ((1.0 - eps - eps_i) * nll + eps_i * smooth).sum()
    actual = smoothloss.cross_entropy(
        x, y, label_smoothing=eps, convention="others", ignore_index=pad, reduction="sum"
    )
    assert rel_err(actual, expected) <= F64


@pytest.mark.parametrize("eps", [0.1, 0.4])
@pytest.mark.parametrize("z", [0.0, 1e-4])
def test_t5x_kl_normalizing_constant(eps, z):
    """t5x compute_weighted_cross_entropy: CE against (1-ε, ε/(K-1)) targets minus
    -(c·log c + (K-1)·lc·log(lc + 1e-20)), plus z·lse²; summed over tokens."""
    K = 11
    rng = np.random.default_rng(6)
    x = _logits((4, 6, K), seed=6)
    y = rng.integers(0, K, (4, 6))
    c, lc = 1.0 - eps, eps / (K - 1)
    normalizing = -(c * np.log(c) + (K - 1) * lc * np.log(lc + 1e-20))
    soft = np.full((4, 6, K), lc)
    np.put_along_axis(soft, y[..., None], c, axis=-1)
    lse = np.log(np.exp(x).sum(-1))
    ce = -(soft * (x - lse[..., None])).sum(-1)
    expected = (ce - normalizing + z * lse**2).sum()
    actual = smoothloss.cross_entropy(
        x, y, label_smoothing=eps, convention="others", kl=True, z_loss=z, reduction="sum"
    )
    assert abs(float(actual) - expected) <= 1e-10 * abs(expected) + 1e-15


# ----------------------------------------------------------------------------- optax
@pytest.fixture
def jax():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    return jax


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_optax_smooth_labels_then_softmax_cross_entropy(jax, eps):
    optax = pytest.importorskip("optax")
    jnp = jax.numpy
    K = 9
    x = jnp.asarray(_logits((12, K), seed=7))
    y = np.random.default_rng(7).integers(0, K, 12)
    onehot = jax.nn.one_hot(y, K, dtype=jnp.float64)

    def theirs(x):
        return optax.softmax_cross_entropy(x, optax.smooth_labels(onehot, eps))

    def ours(x):
        return smoothloss.cross_entropy(x, jnp.asarray(y), label_smoothing=eps, reduction="none")

    assert rel_err(ours(x), theirs(x)) <= F64
    g_t = jax.grad(lambda x: theirs(x).sum())(x)
    g_o = jax.jit(jax.grad(lambda x: ours(x).sum()))(x)
    assert rel_err(g_o, g_t) <= F64
    # the soft path takes optax's own smoothed targets unchanged
    assert rel_err(smoothloss.cross_entropy(x, optax.smooth_labels(onehot, eps), reduction="none"), theirs(x)) <= F64
    # and smooth_labels builds the same targets
    assert rel_err(smoothloss.smooth_labels(onehot, label_smoothing=eps), optax.smooth_labels(onehot, eps)) <= F64


def test_optax_integer_labels(jax):
    optax = pytest.importorskip("optax")
    x = jax.numpy.asarray(_logits((10, 6), seed=8))
    y = jax.numpy.asarray(np.random.default_rng(8).integers(0, 6, 10))
    expected = optax.softmax_cross_entropy_with_integer_labels(x, y)
    assert rel_err(smoothloss.cross_entropy(x, y, reduction="none"), expected) <= F64


# ----------------------------------------------------------------------------- keras
@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_keras_categorical_crossentropy_from_logits(eps):
    tf = pytest.importorskip("tensorflow")
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "tensorflow":
        pytest.skip("this parity test runs Keras on its TensorFlow backend")
    K = 8
    x = tf.constant(_logits((10, K), seed=9), dtype=tf.float32)
    y = np.random.default_rng(9).integers(0, K, 10)
    onehot = tf.one_hot(y, K, dtype=tf.float32)
    keras_loss = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=eps)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        expected = keras_loss(onehot, x)
        actual = smoothloss.cross_entropy(x, tf.constant(y), label_smoothing=eps)
    assert rel_err(actual.numpy(), expected.numpy()) <= 1e-5
    assert rel_err(tape.gradient(actual, x).numpy(), tape.gradient(expected, x).numpy()) <= 1e-5
