"""TensorFlow transforms: nested tapes (second derivatives) and ForwardAccumulator
(forward mode), against a plain float64 TensorFlow reference differentiated by
TensorFlow itself, for the conformance option sets."""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

import smoothloss  # noqa: E402

K = 5
OPTIONS = {
    "plain": dict(),
    "smooth": dict(label_smoothing=0.1),
    "others": dict(label_smoothing=0.2, convention="others"),
    "weight": dict(label_smoothing=0.1, weight=[0.5, 1.0, 2.0, 1.5, 0.7]),
    "ignore": dict(label_smoothing=0.1, ignore_index=2),
    "zloss": dict(label_smoothing=0.1, z_loss=0.01),
    "softcap": dict(label_smoothing=0.1, softcap=2.0),
    "kl": dict(label_smoothing=0.1, kl=True),
    "probs": dict(label_smoothing=0.1, probabilities=True),
    "probs_weight_sum": dict(label_smoothing=0.2, probabilities=True, weight=[0.5, 1.0, 2.0, 1.5, 0.7], reduction="sum"),
    "none": dict(label_smoothing=0.1, reduction="none", z_loss=0.01),
}


def _xlogx(q):
    return tf.where(q > 0, q * tf.math.log(tf.where(q > 0, q, 1.0)), 0.0)


def reference(x, y, *, label_smoothing=0.0, convention="uniform", weight=None, ignore_index=None,
              reduction="mean", z_loss=0.0, softcap=None, kl=False, probabilities=False):
    """Plain float64 TensorFlow: log_softmax, a dense smoothed target, PyTorch's mean."""
    eps = label_smoothing
    if softcap is not None:
        x = softcap * tf.tanh(x / softcap)
    t = y if probabilities else tf.one_hot(tf.where(y == (ignore_index or -1), 0, y), K, dtype=x.dtype)
    q = (1 - eps) * t + (eps / K if convention == "uniform" else eps * (1 - t) / (K - 1))
    w = tf.ones(K, x.dtype) if weight is None else tf.constant(weight, x.dtype)
    logp = tf.nn.log_softmax(x, axis=-1)
    lse = tf.reduce_logsumexp(x, axis=-1)
    loss = -tf.reduce_sum(w * q * logp, axis=-1) + z_loss * lse * lse
    if kl:
        loss = loss + tf.reduce_sum(w * _xlogx(q), axis=-1)
    valid = tf.ones_like(loss) if ignore_index is None else tf.cast(y != ignore_index, x.dtype)
    loss = loss * valid
    if reduction == "none":
        return loss
    if reduction == "sum":
        return tf.reduce_sum(loss)
    if probabilities:
        return tf.reduce_mean(loss)
    den = tf.reduce_sum(tf.reduce_sum(w * t, axis=-1) * valid) if weight is not None else tf.reduce_sum(valid)
    return tf.reduce_sum(loss) / den


def _inputs(opts):
    rng = np.random.default_rng(7)
    x = tf.constant(rng.normal(size=(4, K)) * 2.0)
    if opts.get("probabilities"):
        p = rng.random((4, K))
        y = tf.constant(p / p.sum(-1, keepdims=True))
    else:
        y = tf.constant([0, 2, 4, 1])
    return x, y


def _ours(opts):
    kw = {k: v for k, v in opts.items() if k != "probabilities"}
    if "weight" in kw:
        kw["weight"] = tf.constant(kw["weight"], tf.float64)
    return lambda x, y: smoothloss.cross_entropy(x, y, **kw)


def _hessian_and_jvp(fn, x, y, v):
    with tf.GradientTape() as outer:
        outer.watch(x)
        with tf.GradientTape() as inner:
            inner.watch(x)
            loss = tf.reduce_sum(fn(x, y))
        g = inner.gradient(loss, x)
    hessian = outer.jacobian(g, x)
    with tf.autodiff.ForwardAccumulator(x, v) as acc:
        out = fn(x, y)
    return loss, g, hessian, acc.jvp(out)


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_second_derivatives_and_forward_mode(name):
    opts = OPTIONS[name]
    x, y = _inputs(opts)
    v = tf.constant(np.random.default_rng(8).normal(size=(4, K)))
    ours = _hessian_and_jvp(_ours(opts), x, y, v)
    theirs = _hessian_and_jvp(lambda x, y: reference(x, y, **opts), x, y, v)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-10, atol=1e-12)


def test_forward_mode_inside_tf_function():
    x, y = _inputs({})
    v = tf.constant(np.random.default_rng(9).normal(size=(4, K)))

    @tf.function
    def jvp(x):
        with tf.autodiff.ForwardAccumulator(x, v) as acc:
            out = smoothloss.cross_entropy(x, y, label_smoothing=0.1)
        return acc.jvp(out)

    with tf.autodiff.ForwardAccumulator(x, v) as acc:
        out = reference(x, y, label_smoothing=0.1)
    np.testing.assert_allclose(jvp(x).numpy(), acc.jvp(out).numpy(), rtol=1e-10)
