"""The conformance suite: every backend against the float64 reference, and pairwise.

For each case of the grid (smoothloss.testing.cases) and each backend:
* the loss and the framework's autodiff gradient of ``cross_entropy``;
* the closed-form gradient of ``cross_entropy_and_grad``;
both against the independent float64 reference, with a relative tolerance set by the
dtype (float64 1e-10, float32 1e-5). The reference's own gradient is checked against
central finite differences, and each backend's float64 loss is differentiated
numerically too. Frameworks are compared pairwise on the same case.
"""

from __future__ import annotations

import functools
import itertools

import numpy as np
import pytest

import smoothloss
from smoothloss.testing import finite_difference_grad, reference_cross_entropy, rel_err, tolerance
from smoothloss.testing.cases import conformance_cases

CASES = conformance_cases()
IDS = [c.id for c in CASES]


def _native(driver, case):
    """The case's arrays on the driver's framework and device."""
    logits, targets, opts = case.make()
    x = driver.asarray(logits, case.dtype)
    t = driver.asarray(targets, None if case.targets == "int" else case.dtype)
    opts = dict(opts)
    if "weight" in opts:
        opts["weight"] = driver.asarray(opts["weight"], case.dtype)
    return x, t, opts


def _check_native(driver, out, dtype_name):
    """The result lives in the backend under test, on its device, with the right dtype."""
    from smoothloss.backends import framework_name

    assert framework_name(out) == driver.framework
    assert driver.dtype_name(out) == dtype_name
    assert driver.device_of(out) is not None


@functools.lru_cache(maxsize=None)
def _reference(case):
    logits, targets, opts = case.make()
    return reference_cross_entropy(logits, targets, **opts)


def _check_loss_and_grad(backend, case):
    if not backend.supports(case.dtype):
        pytest.skip(f"{backend.name} has no {case.dtype}")
    x, t, opts = _native(backend, case)
    fn = lambda x, t: smoothloss.cross_entropy(x, t, **opts)  # noqa: E731
    ref_loss, ref_grad = _reference(case)
    tol = tolerance(case.dtype)
    if backend.has_autodiff:
        loss, grad = backend.value_and_grad(fn, x, t)
        _check_native(backend, grad, case.dtype)
        assert rel_err(backend.to_numpy(grad), ref_grad) <= tol
    else:
        loss = backend.call(fn, x, t)
    _check_native(backend, loss, case.dtype)
    assert rel_err(backend.to_numpy(loss), ref_loss) <= tol


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_loss_and_autodiff_grad(grid_backend, case):
    _check_loss_and_grad(grid_backend, case)


def _check_closed_form(driver, case):
    x, t, opts = _native(driver, case)
    loss, grad = driver.call(lambda x, t: smoothloss.cross_entropy_and_grad(x, t, **opts), x, t)
    ref_loss, ref_grad = _reference(case)
    tol = tolerance(case.dtype)
    _check_native(driver, grad, case.dtype)
    assert tuple(grad.shape) == tuple(x.shape)
    assert rel_err(driver.to_numpy(loss), ref_loss) <= tol
    assert rel_err(driver.to_numpy(grad), ref_grad) <= tol


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_closed_form_grad(array_backend, case):
    """cross_entropy_and_grad on the backends without autodiff, on the whole grid."""
    _check_closed_form(array_backend, case)


# The frameworks' autodiff of cross_entropy already runs the registered closed form on
# the whole grid (test_loss_and_autodiff_grad); cross_entropy_and_grad itself is checked
# on every option set at K = 3 and 1000.
SUBSET = [c for c in CASES if c.K in (3, 1000)]


@pytest.mark.parametrize("case", SUBSET, ids=[c.id for c in SUBSET])
def test_loss_and_autodiff_grad_eager(eager_framework, case):
    _check_loss_and_grad(eager_framework, case)


@pytest.mark.parametrize("case", SUBSET, ids=[c.id for c in SUBSET])
def test_closed_form_grad_frameworks(framework, case):
    _check_closed_form(framework, case)


def _fd_coords(shape, n=6, seed=0):
    rng = np.random.default_rng(seed)
    return [tuple(int(rng.integers(0, s)) for s in shape) for _ in range(n)]


F64_CASES = [c for c in CASES if c.dtype == "float64"]
F64_SUBSET = [c for c in SUBSET if c.dtype == "float64"]


@pytest.mark.parametrize("case", F64_CASES, ids=[c.id for c in F64_CASES])
def test_reference_grad_matches_finite_differences(case):
    logits, targets, opts = case.make()
    _, grad = reference_cross_entropy(logits, targets, **opts)
    coords = _fd_coords(logits.shape)
    fd = finite_difference_grad(
        lambda z: np.sum(reference_cross_entropy(z, targets, **opts)[0]), logits, coords
    )
    np.testing.assert_allclose(np.array([grad[c] for c in coords]), fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("case", F64_SUBSET, ids=[c.id for c in F64_SUBSET])
def test_backend_loss_matches_finite_differences(eager_backend, case):
    """d loss / d logits of the backend's own float64 loss, numerically, at a few coordinates
    (eager calls: the traced ids would repeat their eager twins)."""
    backend = eager_backend
    x, t, opts = _native(backend, case)
    logits = backend.to_numpy(x)

    def f(z):
        return np.sum(backend.to_numpy(smoothloss.cross_entropy(backend.asarray(z), t, **opts)))

    coords = _fd_coords(logits.shape, n=4)
    _, ref_grad = _reference(case)
    fd = finite_difference_grad(f, logits, coords)
    np.testing.assert_allclose(fd, np.array([ref_grad[c] for c in coords]), rtol=1e-6, atol=1e-8)


PAIRS = list(itertools.combinations(["torch", "jax", "tensorflow"], 2))
PAIR_CASES = SUBSET


@pytest.mark.parametrize("case", PAIR_CASES, ids=[c.id for c in PAIR_CASES])
@pytest.mark.parametrize("pair", PAIRS, ids=["-".join(p) for p in PAIRS])
def test_frameworks_agree_pairwise(driver_for, pair, case):
    results = []
    for name in pair:
        d = driver_for(name)
        x, t, opts = _native(d, case)
        loss, grad = d.value_and_grad(lambda x, t: smoothloss.cross_entropy(x, t, **opts), x, t)
        results.append((d.to_numpy(loss), d.to_numpy(grad)))
    (la, ga), (lb, gb) = results
    tol = 2 * tolerance(case.dtype)
    assert rel_err(la, lb) <= tol
    assert rel_err(ga, gb) <= tol


# ----------------------------------------------------------------------------- custom gradients
COMPOSED_CASES = SUBSET


@pytest.mark.parametrize("case", COMPOSED_CASES, ids=[c.id for c in COMPOSED_CASES])
def test_composed_forward_autodiff_matches_reference(framework, case):
    """Plain autodiff of the Array-API forward (no registered gradient) against the
    reference: the third corner of custom gradient vs autodiff vs reference."""
    from smoothloss.testing import composed_cross_entropy

    x, t, opts = _native(framework, case)
    loss, grad = framework.value_and_grad(lambda x, t: composed_cross_entropy(x, t, **opts), x, t)
    ref_loss, ref_grad = _reference(case)
    tol = tolerance(case.dtype)
    assert rel_err(framework.to_numpy(loss), ref_loss) <= tol
    assert rel_err(framework.to_numpy(grad), ref_grad) <= tol


INPUT_GRAD_CASES = [
    c for c in CASES if c.K in (3, 10) and c.dtype == "float64" and (c.targets == "prob" or c.options.get("weight"))
]


@pytest.mark.parametrize("case", INPUT_GRAD_CASES, ids=[c.id for c in INPUT_GRAD_CASES])
def test_target_and_weight_grads_match_autodiff(framework, case):
    """The closed-form gradients for probability targets and class weights equal
    autodiff of the composed forward."""
    from smoothloss.testing import composed_cross_entropy

    x, t, opts = _native(framework, case)
    w = opts.pop("weight", None)
    args = (x, t) if w is None else (x, t, w)
    argnums = tuple(i for i in range(len(args)) if not (i == 1 and case.targets == "int"))

    def custom(x, t, w=None):
        return smoothloss.cross_entropy(x, t, weight=w, **opts)

    def composed(x, t, w=None):
        return composed_cross_entropy(x, t, weight=w, **opts)

    got = framework.grads(custom, args, argnums)
    expected = framework.grads(composed, args, argnums)
    for g, e in zip(got, expected):
        assert rel_err(framework.to_numpy(g), framework.to_numpy(e)) <= 1e-10


NATIVE_CASES = [c for c in SUBSET if c.dtype == "float64"]


@pytest.mark.parametrize("case", NATIVE_CASES, ids=[c.id for c in NATIVE_CASES])
@pytest.mark.parametrize("name", ["torch", "tensorflow"])
def test_native_kernels_match_the_array_api_composition(driver_for, name, case):
    """The framework-native kernels (smoothloss.backends) against the composition."""
    from smoothloss.backends import native_kernels

    d = driver_for(name)
    x, t, opts = _native(d, case)
    fast = smoothloss.cross_entropy_and_grad(x, t, **opts)
    with native_kernels(False):
        plain = smoothloss.cross_entropy_and_grad(x, t, **opts)
    for a, b in zip(fast, plain):
        assert rel_err(d.to_numpy(a), d.to_numpy(b)) <= 1e-12


LEAN_CASES = [c for c in NATIVE_CASES if c.targets == "int" and "weight" not in dict(c.make()[2])]


@pytest.mark.parametrize("case", LEAN_CASES, ids=[c.id for c in LEAN_CASES])
@pytest.mark.parametrize("name", ["numpy", "torch", "jax", "tensorflow"])
def test_forward_without_stats_gives_the_same_logits_gradient(driver_for, name, case):
    """``_core.forward(stats=False)`` (the statistics only as the backward's softmax reads
    them) gives the same loss, and the same logits' gradient from ``_core.backward``, as
    the full statistics, with each framework's native kernels."""
    from smoothloss import _core
    from smoothloss.backends import bind

    d = driver_for(name)
    x, t, opts = _native(d, case)
    fw, (x, t, _) = bind(x, t, None)
    o = _core.validate(fw, x, t, None, **opts)
    full = _core.forward(fw, x, t, None, o)
    lean = _core.forward(fw, x, t, None, o, stats=False)
    assert isinstance(lean[1], tuple)
    cot = 1.0 if o.reduction != "none" else fw.xp.ones_like(full[0])
    g_full = _core.backward(fw, x, t, None, o, full[1], full[2], full[0], cot)[0]
    g_lean = _core.backward(fw, x, t, None, o, lean[1], lean[2], lean[0], cot)[0]
    assert rel_err(d.to_numpy(lean[0]), d.to_numpy(full[0])) <= 1e-12
    assert rel_err(d.to_numpy(g_lean), d.to_numpy(g_full)) <= 1e-12
