"""Properties that hold for any input, drawn by hypothesis, on every backend."""

from __future__ import annotations

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import smoothloss  # noqa: E402
from smoothloss.testing import rel_err  # noqa: E402

SETTINGS = settings(
    max_examples=8, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@st.composite
def problems(draw, max_k=9, max_b=5):
    """(logits (B, K) float64, labels (B,), smoothing, convention, weight or None)."""
    # few distinct shapes, so eager JAX and TensorFlow reuse their compiled kernels
    K = draw(st.sampled_from([k for k in (2, 3, 7, 9) if k <= max_k]))
    B = draw(st.sampled_from([b for b in (1, 4, 5, 8) if b <= max_b]))
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.sampled_from([0.1, 1.0, 10.0, 50.0]))
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=scale, size=(B, K))
    labels = rng.integers(0, K, B)
    eps = draw(st.floats(0.0, 1.0))
    convention = draw(st.sampled_from(["uniform", "others"]))
    weight = rng.uniform(0.2, 3.0, K) if draw(st.booleans()) else None
    return logits, labels, eps, convention, weight


def _run(backend, fn, *arrays):
    return backend.to_numpy(backend.call(fn, *[backend.asarray(a) for a in arrays]))


@SETTINGS
@given(problems())
def test_integer_path_equals_dense_path(backend, problem):
    logits, labels, eps, convention, weight = problem
    K = logits.shape[1]
    on, off = smoothloss.smoothing_coefficients(eps, K, convention)
    dense = np.where(labels[:, None] == np.arange(K), on, off)
    opts = {"reduction": "none"}
    w = () if weight is None else (weight,)

    def sparse(x, y, *w):
        return smoothloss.cross_entropy(x, y, label_smoothing=eps, convention=convention,
                                        weight=w[0] if w else None, **opts)

    def soft(x, q, *w):
        return smoothloss.cross_entropy(x, q, weight=w[0] if w else None, **opts)

    a = _run(backend, sparse, logits, labels, *w)
    b = _run(backend, soft, logits, dense, *w)
    assert rel_err(a, b) <= 1e-10


@SETTINGS
@given(problems(), st.floats(-1e3, 1e3))
def test_invariant_to_a_constant_added_per_row(backend, problem, shift):
    logits, labels, eps, convention, weight = problem
    shifts = np.linspace(-1, 1, logits.shape[0])[:, None] * shift

    def f(x, y):
        return smoothloss.cross_entropy(x, y, label_smoothing=eps, convention=convention, reduction="none")

    a = _run(backend, f, logits, labels)
    b = _run(backend, f, logits + shifts, labels)
    # the shift is exact in float64 only up to |shift|·eps_machine per logit
    assert np.max(np.abs(a - b)) <= 1e-12 * (1 + np.abs(logits).max() + abs(shift)) * logits.shape[1]


@SETTINGS
@given(problems())
def test_kl_is_nonnegative_and_loss_bounds_entropy(backend, problem):
    logits, labels, eps, convention, _ = problem

    def f(x, y, kl):
        return smoothloss.cross_entropy(x, y, label_smoothing=eps, convention=convention, kl=kl, reduction="none")

    ce = _run(backend, lambda x, y: f(x, y, False), logits, labels)
    kl = _run(backend, lambda x, y: f(x, y, True), logits, labels)
    K = logits.shape[1]
    on, off = smoothloss.smoothing_coefficients(eps, K, convention)
    entropy = -sum(v * np.log(v) * n for v, n in ((on, 1), (off, K - 1)) if v > 0)
    assert np.all(kl >= -1e-12 * (1 + np.abs(ce)))
    assert np.all(ce >= entropy - 1e-12 * (1 + np.abs(ce)))
    np.testing.assert_allclose(ce - kl, entropy, rtol=1e-9, atol=1e-9)


@SETTINGS
@given(problems())
def test_gradient_rows_sum_to_zero(backend, problem):
    logits, labels, eps, convention, weight = problem
    w = () if weight is None else (weight,)

    def f(x, y, *w):
        return smoothloss.cross_entropy_and_grad(
            x, y, label_smoothing=eps, convention=convention, weight=w[0] if w else None
        )[1]

    g = _run(backend, f, logits, labels, *w)
    assert np.max(np.abs(g.sum(-1))) <= 1e-12 * (1 + np.abs(g).max())


@SETTINGS
@given(problems())
def test_others_equals_uniform_with_rescaled_smoothing(backend, problem):
    logits, labels, eps, _, weight = problem
    K = logits.shape[1]
    eps = min(eps, (K - 1) / K)  # keep ε·K/(K-1) within [0, 1]

    def f(x, y):
        a = smoothloss.cross_entropy(x, y, label_smoothing=eps, convention="others", reduction="none")
        b = smoothloss.cross_entropy(x, y, label_smoothing=min(eps * K / (K - 1), 1.0), reduction="none")
        return a - b

    d = _run(backend, f, logits, labels)
    assert np.max(np.abs(d)) <= 1e-11 * (1 + np.abs(logits).max())


@SETTINGS
@given(problems(max_b=8), st.integers(1, 7), st.randoms(use_true_random=False))
def test_batch_order_and_chunking_do_not_change_the_sum(backend, problem, chunk, rnd):
    logits, labels, eps, convention, weight = problem
    order = list(range(len(labels)))
    rnd.shuffle(order)

    def f(x, y):
        return smoothloss.cross_entropy(x, y, label_smoothing=eps, convention=convention, reduction="sum")

    total = float(_run(backend, f, logits, labels))
    permuted = float(_run(backend, f, logits[order], labels[order]))
    chunked = sum(
        float(_run(backend, f, logits[i:i + chunk], labels[i:i + chunk])) for i in range(0, len(labels), chunk)
    )
    assert abs(permuted - total) <= 1e-12 * (1 + abs(total))
    assert abs(chunked - total) <= 1e-12 * (1 + abs(total))


@SETTINGS
@given(problems(), st.booleans(), st.sampled_from([0.0, 1e-2]))
def test_mean_is_the_mean_of_the_positions(backend, problem, kl, z_loss):
    """The mean (which, over a known number of unweighted positions, folds 1/count into
    the loss's coefficients and then sums) equals the mean of the per-position losses and
    1/count times their sum, with and without weights, kl and z-loss."""
    logits, labels, eps, convention, weight = problem
    w = () if weight is None else (weight,)

    def f(reduction):
        def loss(x, y, *w):
            return smoothloss.cross_entropy(x, y, label_smoothing=eps, convention=convention, kl=kl,
                                            z_loss=z_loss, weight=w[0] if w else None, reduction=reduction)
        return loss

    rows, mean, total = (_run(backend, f(r), logits, labels, *w) for r in ("none", "mean", "sum"))
    den = len(labels) if weight is None else weight[labels].sum()
    floor = 1e-12 * (1.0 + np.abs(rows).max())
    np.testing.assert_allclose(mean, rows.sum() / den, rtol=1e-12, atol=floor)
    np.testing.assert_allclose(mean, total / den, rtol=1e-12, atol=floor)
