"""smoothloss.jax side by side with optax: values, gradients, jit/vmap/grad, a training step.

Every expectation is optax's own function evaluated in the test on the same inputs
(never a pasted number). Our side runs under ``jax.jit`` unless a test says otherwise.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")
jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402

from smoothloss import jax as slj  # noqa: E402
from smoothloss.testing import rel_err, tolerance  # noqa: E402

# (logits shape, class axis): the default layout, a class axis in the middle, and
# optax's tuple of axes (labels are flat indices into them).
LAYOUTS = {
    "last": ((6, 5), -1),
    "middle": ((3, 5, 4), 1),
    "tuple": ((3, 2, 4, 2), (1, 3)),
}


def _axes(axis, ndim):
    return tuple(a % ndim for a in (axis if isinstance(axis, tuple) else (axis,)))


def _batch_shape(shape, axis):
    axes = _axes(axis, len(shape))
    return tuple(s for i, s in enumerate(shape) if i not in axes)


def _to_classes_last(a, axis):
    """Class axes moved to the end and flattened (optax's flat-index layout)."""
    axes = _axes(axis, a.ndim)
    batch = tuple(i for i in range(a.ndim) if i not in axes)
    a = a.transpose(batch + axes)
    return a.reshape(a.shape[: len(batch)] + (-1,))


def _from_classes_last(a, shape, axis):
    """Inverse of :func:`_to_classes_last`."""
    axes = _axes(axis, len(shape))
    batch = tuple(i for i in range(len(shape)) if i not in axes)
    a = a.reshape(tuple(shape[i] for i in batch) + tuple(shape[i] for i in axes))
    return a.transpose(tuple(int(i) for i in np.argsort(batch + axes)))


def make_case(layout, mask, dtype, seed=0):
    """Logits, soft labels, integer labels and an optax ``where`` for one layout.

    ``mask``: None, "classes" (a mask of the logits' shape; one example has no class
    left, every live example keeps its label's class) or "examples" (a mask of the
    batch shape; masked examples carry the padding label -100).
    """
    shape, axis = LAYOUTS[layout]
    rng = np.random.default_rng(seed)
    x = _to_classes_last(rng.normal(scale=2.0, size=shape), axis)  # (..., K)
    K = x.shape[-1]
    t = rng.random(x.shape) + 0.05
    t /= t.sum(-1, keepdims=True)
    y = rng.integers(0, K, x.shape[:-1])
    where = None
    if mask == "classes":
        w = rng.random(x.shape) < 0.6
        np.put_along_axis(w, y[..., None], True, axis=-1)
        w.reshape(-1, K)[1] = False  # one example with no class at all
        where = _from_classes_last(w, shape, axis)
    elif mask == "examples":
        keep = rng.random(x.shape[:-1]) < 0.6
        keep.reshape(-1)[0], keep.reshape(-1)[1] = True, False
        y = np.where(keep, y, -100)
        where = keep
    x, t = _from_classes_last(x, shape, axis), _from_classes_last(t, shape, axis)
    return (
        jnp.asarray(x.astype(dtype)),
        jnp.asarray(t.astype(dtype)),
        jnp.asarray(y.reshape(_batch_shape(shape, axis))),
        None if where is None else jnp.asarray(where),
    )


def full_mask(where, shape, axis):
    """optax.smooth_labels takes a mask of the labels' shape: expand as optax's losses do."""
    if where is None:
        return None
    if where.ndim != len(shape):
        where = jnp.expand_dims(where, axis)
    return jnp.broadcast_to(where, shape)


def dead(where, shape, axis):
    """NumPy (no eager JAX ops in assertions): True where ``where`` masks a logit."""
    w = np.asarray(where)
    if w.ndim != len(shape):
        w = np.expand_dims(w, axis)
    return ~np.broadcast_to(w, shape)


def assert_zero_where(a, mask):
    a = np.asarray(a, dtype=np.float64)
    assert not np.any(np.where(mask, a, 0.0)), "expected exact zeros there"


def one_hot(y, shape, axis, dtype):
    """Dense one-hot of (flat) labels in the logits' layout; padding labels (< 0) → class 0."""
    K = int(np.prod([shape[a] for a in _axes(axis, len(shape))]))
    oh = jax.nn.one_hot(jnp.where(y < 0, 0, y), K, dtype=dtype)
    return _from_classes_last(oh, shape, axis)


def optax_dense(x, t, *, axis, where, eps):
    """optax.softmax_cross_entropy of optax.smooth_labels (issue 1486's recipe)."""
    if eps:
        t = optax.smooth_labels(t, eps, axis=axis, where=full_mask(where, x.shape, axis))
    return optax.softmax_cross_entropy(x, t, axis=axis, where=where)


def optax_integer(x, y, *, axis, where, eps):
    if not eps:
        return optax.softmax_cross_entropy_with_integer_labels(x, y, axis=axis, where=where)
    return optax_dense(x, one_hot(y, x.shape, axis, x.dtype), axis=axis, where=where, eps=eps)


def ours(kind, *, axis, where, eps, jit=True):
    """Our loss as f(x, target); the mask is an argument of the jitted function (traced)."""
    fn = slj.softmax_cross_entropy if kind == "dense" else slj.softmax_cross_entropy_with_integer_labels

    def call(x, target, where):
        return fn(x, target, axis=axis, where=where, label_smoothing=eps)

    call = jax.jit(call) if jit else call
    return lambda x, target: call(x, target, where)


def reference(kind, *, axis, where, eps):
    if kind == "dense":
        return lambda x, t: optax_dense(x, t, axis=axis, where=where, eps=eps)
    return lambda x, y: optax_integer(x, y, axis=axis, where=where, eps=eps)


EPS = (0.0, 0.1)


def over_eps(make, **kw):
    """One jitted function giving ``make(eps=ε, where=...)(x, target)`` for every ε in EPS."""

    @jax.jit
    def run(x, target, where):
        return [make(where=where, eps=eps, **kw)(x, target) for eps in EPS]

    return run


# ----------------------------------------------------------------------------- values
@pytest.mark.parametrize("mask", [None, "classes", "examples"])
@pytest.mark.parametrize(
    "layout, dtype", [("last", "float64"), ("middle", "float64"), ("tuple", "float64"), ("middle", "float32")]
)
@pytest.mark.parametrize("kind", ["dense", "integer"])
def test_values_match_optax_under_jit(kind, layout, dtype, mask):
    """ε = 0: optax's function; ε > 0: optax's loss of optax.smooth_labels (issue 1486)."""
    axis = LAYOUTS[layout][1]
    x, t, y, where = make_case(layout, mask, dtype)
    target = t if kind == "dense" else y
    got = over_eps(ours, kind=kind, axis=axis, jit=False)(x, target, where)
    want = over_eps(reference, kind=kind, axis=axis)(x, target, where)
    empty = None if mask is None else np.all(dead(where, x.shape, axis), axis=axis)
    for eps, g, w in zip(EPS, got, want):
        assert g.shape == w.shape == y.shape
        assert g.dtype == jnp.dtype(dtype)
        assert rel_err(g, w) <= tolerance(dtype), eps
        if empty is not None:  # examples with no class left give exactly 0
            assert empty.any()
            assert_zero_where(g, empty)


def test_values_match_optax_eagerly():
    """Not traced: the adapter and the core's eager label-value checks run too."""
    x, _, y, where = make_case("last", "classes", "float64", seed=1)
    got = ours("integer", axis=-1, where=where, eps=0.2, jit=False)(x, y)
    want = jax.jit(reference("integer", axis=-1, where=where, eps=0.2))(x, y)
    assert rel_err(got, want) <= 1e-10


def test_integer_smoothing_equals_dense_smoothing():
    """optax issue 1486: integer labels with smoothing = the dense smoothed path."""
    x, _, y, _ = make_case("middle", None, "float64", seed=2)

    @jax.jit
    def both(x, y):
        q = one_hot(y, x.shape, 1, x.dtype)
        return [
            (
                slj.softmax_cross_entropy_with_integer_labels(x, y, axis=1, label_smoothing=eps),
                slj.softmax_cross_entropy(x, q, axis=1, label_smoothing=eps),
            )
            for eps in (0.1, 0.5, 1.0)
        ]

    for a, b in both(x, y):
        assert rel_err(a, b) <= 1e-12


def test_label_on_a_masked_class_is_excluded_like_optax_dense():
    """Documented deviation: optax's integer function reads the masked logit there."""
    x = jnp.array([[1.0, 2.0, 3.0], [3.0, 1.0, 0.0]])
    y = jnp.array([0, 1])
    where = jnp.array([[True, True, True], [True, False, True]])  # example 1: label masked
    got = over_eps(ours, kind="integer", axis=-1, jit=False)(x, y, where)
    dense = over_eps(reference, kind="dense", axis=-1)(x, jax.nn.one_hot(y, 3, dtype=x.dtype), where)
    for g, w in zip(got, dense):
        assert rel_err(g, w) <= 1e-12
    # optax's own integer function agrees on the first example and reads the masked
    # logit on the second (logsumexp_W(x) - x_y); this adapter does not
    theirs = jax.jit(optax.softmax_cross_entropy_with_integer_labels)(x, y, where=where)
    assert rel_err(got[0][0], theirs[0]) <= 1e-12
    assert rel_err(got[0][1], theirs[1]) > 0.1


def test_class_mask_shared_by_all_examples():
    """A (1, K) mask broadcasts over the batch (a (K,) mask would mean examples, as in optax)."""
    x, t, y, _ = make_case("last", None, "float64", seed=13)
    where = jnp.asarray(np.array([[True, True, False, True, True]]))
    y = jnp.asarray(np.where(np.asarray(y) == 2, 0, np.asarray(y)))  # labels on live classes
    for kind, target in (("dense", t), ("integer", y)):
        got = over_eps(ours, kind=kind, axis=-1, jit=False)(x, target, where)
        want = over_eps(reference, kind=kind, axis=-1)(x, target, where)
        for g, w in zip(got, want):
            assert rel_err(g, w) <= 1e-10, kind


# ----------------------------------------------------------------------------- gradients
def grads_over_eps(make, cot, **kw):
    """jit(grad) of Σ cot·loss for every ε in EPS (a non-uniform cotangent)."""

    @jax.jit
    def run(x, target, where):
        return [
            jax.grad(lambda x: jnp.sum(make(where=where, eps=eps, **kw)(x, target) * cot))(x) for eps in EPS
        ]

    return run


@pytest.mark.parametrize(
    "layout, mask", [("last", None), ("last", "classes"), ("last", "examples"), ("middle", "classes")]
)
@pytest.mark.parametrize("kind", ["dense", "integer"])
def test_grad_matches_jax_grad_of_optax(kind, layout, mask):
    axis = LAYOUTS[layout][1]
    x, t, y, where = make_case(layout, mask, "float64", seed=3)
    target = t if kind == "dense" else y
    cot = jnp.asarray(np.random.default_rng(4).normal(size=y.shape))
    got = grads_over_eps(ours, cot, kind=kind, axis=axis, jit=False)(x, target, where)
    want = grads_over_eps(reference, cot, kind=kind, axis=axis)(x, target, where)
    for eps, g, w in zip(EPS, got, want):
        assert g.dtype == x.dtype and g.shape == x.shape
        assert rel_err(g, w) <= 1e-10, eps
        if mask is not None:  # masked logits get exactly zero gradient
            assert_zero_where(g, dead(where, x.shape, axis))


@pytest.mark.parametrize("mask", [None, "classes"])
def test_grad_wrt_soft_labels_matches_optax(mask):
    """Distillation-style: the targets are differentiated too (dℓ/dt_c = -log softmax_W(x)_c).

    On masked classes optax's gradient is NaN (0·log 0 from its ``-inf`` log-probabilities);
    ours is 0 there, and equal to optax's everywhere else.
    """
    x, t, _, where = make_case("last", mask, "float64", seed=5)

    @jax.jit
    def grads(x, t, where):
        mine = jax.grad(lambda t: slj.softmax_cross_entropy(x, t, where=where).sum())(t)
        theirs = jax.grad(lambda t: optax.softmax_cross_entropy(x, t, where=where).sum())(t)
        return mine, theirs

    got, want = (np.asarray(a) for a in grads(x, t, where))
    masked = np.zeros(x.shape, bool) if where is None else dead(where, x.shape, -1)
    assert rel_err(np.where(masked, 0.0, got), np.where(masked, 0.0, want)) <= 1e-10
    assert_zero_where(got, masked)


def test_grad_closed_form():
    """dℓ/dx = (Σq)·softmax(x) - q, independently of optax."""
    x, _, y, _ = make_case("last", None, "float64", seed=6)
    eps, K = 0.2, x.shape[-1]
    q = (1 - eps) * jax.nn.one_hot(y, K, dtype=x.dtype) + eps / K
    f = jax.jit(jax.grad(lambda x: slj.softmax_cross_entropy_with_integer_labels(x, y, label_smoothing=eps).sum()))
    assert rel_err(f(x), jax.nn.softmax(x) - q) <= 1e-12


def test_value_and_grad_of_mean_loss_under_jit():
    x, t, y, where = make_case("last", "classes", "float32", seed=7)

    @jax.jit
    def both(x, t, y, where):
        out = []
        for kind, target in (("dense", t), ("integer", y)):
            for make in (ours, reference):
                kw = dict(jit=False) if make is ours else {}
                f = make(kind=kind, axis=-1, where=where, eps=0.1, **kw)
                out.append(jax.value_and_grad(lambda x: f(x, target).mean())(x))
        return out

    (v1, g1), (v1r, g1r), (v2, g2), (v2r, g2r) = both(x, t, y, where)
    for v, g, vr, gr in ((v1, g1, v1r, g1r), (v2, g2, v2r, g2r)):
        assert v.dtype == g.dtype == jnp.float32
        assert rel_err(v, vr) <= 1e-5 and rel_err(g, gr) <= 1e-5


# ----------------------------------------------------------------------------- vmap
def test_vmap_per_example_equals_batched():
    x, t, y, where = make_case("last", "classes", "float64", seed=8)
    fns = {"dense": slj.softmax_cross_entropy, "integer": slj.softmax_cross_entropy_with_integer_labels}

    @jax.jit
    def run(x, t, y, where):
        out = {}
        for kind, target in (("dense", t), ("integer", y)):
            fn = fns[kind]
            one = lambda x, target, where, fn=fn: fn(x, target, where=where, label_smoothing=0.1)  # noqa: E731
            r = reference(kind, axis=-1, where=None, eps=0.1)
            out[kind] = (
                jax.vmap(one)(x, target, where),
                one(x, target, where),
                jax.vmap(jax.grad(lambda x, t, fn=fn: fn(x, t, label_smoothing=0.1)))(x, target),
                jax.vmap(jax.grad(r))(x, target),
            )
        return out

    for kind, (per_example, batched, g, g_ref) in run(x, t, y, where).items():
        assert per_example.shape == y.shape, kind
        assert rel_err(per_example, batched) <= 1e-12, kind
        assert rel_err(g, g_ref) <= 1e-10, kind  # per-example gradients against optax's


# ----------------------------------------------------------------------------- training
def test_jitted_training_step_reduces_the_loss():
    rng = np.random.default_rng(9)
    n, d, K = 64, 8, 4
    centres = rng.normal(scale=2.0, size=(K, d))
    y = rng.integers(0, K, n)
    feats = jnp.asarray(centres[y] + rng.normal(size=(n, d)), jnp.float32)
    y = jnp.asarray(y)
    params = {"w": jnp.zeros((d, K), jnp.float32), "b": jnp.zeros((K,), jnp.float32)}
    opt = optax.adam(0.1)
    state = opt.init(params)

    def loss_fn(params):
        logits = feats @ params["w"] + params["b"]
        return slj.softmax_cross_entropy_with_integer_labels(logits, y, label_smoothing=0.1).mean()

    @jax.jit
    def step(params, state):
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    losses = []
    for _ in range(20):
        params, state, loss = step(params, state)
        losses.append(float(loss))
    assert all(np.isfinite(losses))
    assert losses[0] == pytest.approx(np.log(K), rel=1e-6)  # zero weights: uniform softmax
    assert losses[-1] < 0.5 * losses[0]
    # the smoothed loss cannot go below the entropy of its target q (Gibbs' inequality)
    on, off = 1 - 0.1 + 0.1 / K, 0.1 / K
    assert losses[-1] > -(on * np.log(on) + (K - 1) * off * np.log(off))


# ----------------------------------------------------------------------------- 16-bit
@pytest.mark.parametrize("mask", [None, "classes"])
def test_bf16_logits_give_a_float32_loss(mask):
    x64, t, y, where = make_case("last", mask, "float64", seed=10)
    x, t = x64.astype(jnp.bfloat16), t.astype(jnp.float32)

    @jax.jit
    def run(x, t, y, where):
        out = []
        for kind, target in (("dense", t), ("integer", y)):
            f = ours(kind, axis=-1, where=where, eps=0.1, jit=False)
            # optax on the same (bf16-rounded) logits, upcast: our loss is not quantised to bf16
            want = reference(kind, axis=-1, where=where, eps=0.1)(x.astype(jnp.float32), target)
            out.append((f(x, target), want, jax.grad(lambda x: f(x, target).sum())(x)))
        return out

    for got, want, g in run(x, t, y, where):
        assert got.dtype == jnp.float32
        assert rel_err(got, want) <= 1e-5
        assert g.dtype == jnp.bfloat16


# ----------------------------------------------------------------------------- smooth_labels
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_smooth_labels_matches_optax(dtype):
    x, t, _, where = make_case("middle", "classes", dtype, seed=11)
    w = np.asarray(where).copy()
    w[0, 0, :] = True  # every example keeps a class (else α/0 = inf, below)
    where = jnp.asarray(w)
    cases = [
        dict(axis=1, where=None),
        dict(axis=1, where=where),
        dict(axis=(1, 2), where=None),
        dict(axis=-1, where=jnp.array([[[True, False, True, True]]])),
    ]
    for kw in cases:
        got = slj.smooth_labels(t, 0.3, **kw)
        want = optax.smooth_labels(t, 0.3, **kw)
        assert got.dtype == t.dtype
        assert rel_err(got, want) <= tolerance(dtype), kw
    # an array alpha (e.g. a schedule value) under jit
    alpha = jnp.asarray(0.25, dtype)
    got = jax.jit(lambda t, a: slj.smooth_labels(t, a, axis=1))(t, alpha)
    assert rel_err(got, optax.smooth_labels(t, alpha, axis=1)) <= tolerance(dtype)


def test_smooth_labels_where_counts_only_live_classes():
    labels = jnp.array([[0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    where = jnp.array([[True, True, False, False], [False, False, False, False]])
    got = slj.smooth_labels(labels, 0.2, where=where)
    assert rel_err(got[0], jnp.array([0.1, 0.9, 0.1, 0.1])) <= 1e-7  # ε/K_W = 0.2/2
    assert np.all(np.isinf(np.asarray(got)[1]))  # no class left: α/0, as optax
    assert np.all(np.isinf(np.asarray(optax.smooth_labels(labels, 0.2, where=where))[1]))


# ----------------------------------------------------------------------------- masks and NaN
def test_nan_in_masked_positions_stays_out_of_loss_and_gradient():
    """NaN logits on masked classes or examples: loss and gradient as if absent (as optax)."""
    x = jnp.array([[1.0, jnp.nan, 0.5], [jnp.nan, jnp.nan, jnp.nan], [0.2, 0.1, -1.0]])
    y = jnp.array([0, 1, 2])
    q = jax.nn.one_hot(y, 3, dtype=x.dtype)
    cls = jnp.array([[True, False, True], [False, False, False], [True, True, True]])
    rows = jnp.array([True, False, True])

    @jax.jit
    def run(x, x_rows):
        out = []
        for xx, where in ((x, cls), (x_rows, rows)):
            for fn, target in (
                (slj.softmax_cross_entropy_with_integer_labels, y),
                (slj.softmax_cross_entropy, q),
            ):
                f = functools.partial(fn, labels=target, where=where, label_smoothing=0.1)
                out.append((where, f(xx), jax.grad(lambda x, f=f: f(x).sum())(xx)))
        return out

    x_rows = np.asarray(x).copy()
    x_rows[0, 1] = 0.0  # only the masked example holds NaN
    for where, loss, g in run(x, jnp.asarray(x_rows)):
        loss, g = np.asarray(loss), np.asarray(g)
        assert np.all(np.isfinite(loss)) and loss[1] == 0.0
        assert np.all(np.isfinite(g))
        assert_zero_where(g, dead(where, x.shape, -1))


def test_nan_in_live_logits_propagates():
    x = jnp.array([[1.0, jnp.nan, 0.5], [0.0, 1.0, 2.0]])
    f = jax.jit(functools.partial(slj.softmax_cross_entropy_with_integer_labels, label_smoothing=0.1))
    loss = np.asarray(f(x, jnp.array([0, 1])))
    assert np.isnan(loss[0]) and np.isfinite(loss[1])


def test_padding_labels_in_masked_examples_are_accepted_eagerly():
    x, _, y, where = make_case("last", "examples", "float64", seed=12)
    assert np.any(np.asarray(y) == -100)
    got = slj.softmax_cross_entropy_with_integer_labels(x, y, where=where, label_smoothing=0.1)
    y_live = jnp.asarray(np.where(np.asarray(where), np.asarray(y), 0))
    want = jax.jit(reference("integer", axis=-1, where=where, eps=0.1))(x, y_live)
    assert rel_err(got, want) <= 1e-10


# ----------------------------------------------------------------------------- bad input
def test_bad_input_raises_eagerly():
    x = jnp.zeros((2, 3))
    with pytest.raises(TypeError, match="integer class indices"):
        slj.softmax_cross_entropy_with_integer_labels(x, jnp.zeros((2,)))
    with pytest.raises(ValueError, match=r"needs labels \(2,\)"):
        slj.softmax_cross_entropy_with_integer_labels(x, jnp.zeros((3,), jnp.int32))
    with pytest.raises(ValueError, match="labels must lie in"):
        slj.softmax_cross_entropy_with_integer_labels(x, jnp.array([0, 3]))
    with pytest.raises(ValueError, match="label_smoothing"):
        slj.softmax_cross_entropy(x, jnp.ones((2, 3)) / 3, label_smoothing=1.5)
    with pytest.raises(ValueError, match="do not broadcast"):
        slj.softmax_cross_entropy(x, jnp.ones((2, 4)))
    with pytest.raises(ValueError, match="where of shape"):
        slj.softmax_cross_entropy(x, jnp.ones((2, 3)), where=jnp.ones((2, 5), bool))
    with pytest.raises(ValueError, match="out of range"):
        slj.softmax_cross_entropy(x, jnp.ones((2, 3)), axis=2)
    with pytest.raises(TypeError, match="real floating"):
        slj.softmax_cross_entropy(jnp.zeros((2, 3), jnp.int32), jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="alpha"):
        slj.smooth_labels(jnp.ones((2, 3)), -0.1)


def test_axis_and_where_positional_as_in_optax():
    """optax's signatures take ``axis`` and ``where`` positionally; so do the drop-ins."""
    optax = pytest.importorskip("optax")
    x = jnp.asarray(np.random.default_rng(3).normal(size=(4, 5)))
    y = jnp.asarray([0, 4, 2, 1])
    t = jax.nn.one_hot(y, 5, dtype=x.dtype)
    where = jnp.asarray([True, True, False, True])
    np.testing.assert_allclose(
        slj.softmax_cross_entropy(x, t, -1, where), optax.softmax_cross_entropy(x, t, -1, where), rtol=1e-12
    )
    np.testing.assert_allclose(
        slj.softmax_cross_entropy_with_integer_labels(x, y, -1, where),
        optax.softmax_cross_entropy_with_integer_labels(x, y, -1, where), rtol=1e-12,
    )


@pytest.mark.parametrize("axis", [(2, 1), (1, 2), (-1, -2)])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_integer_labels_index_a_tuple_axis_in_the_order_given(axis, label_smoothing):
    """With ``axis=(a, b)`` a label is the row-major flat index over (a, b) in that
    order, as in optax: ``axis=(2, 1)`` and ``axis=(1, 2)`` name different classes.
    The expectation is a float64 loop over the examples (logsumexp minus the picked logit)."""
    rng = np.random.default_rng(11)
    x = rng.normal(size=(2, 3, 4)).astype(np.float64)
    labels = np.array([5, 10])
    a, b = (ax % 3 for ax in axis)
    eps = label_smoothing
    expected = []
    for n in range(2):
        flat = []  # row-major over (a, b): i along axis a, then j along axis b
        for i in range(x.shape[a]):
            for j in range(x.shape[b]):
                at = [n, 0, 0]
                at[a], at[b] = i, j
                flat.append(x[tuple(at)])
        lse = np.log(np.sum(np.exp(flat)))
        nll = [lse - v for v in flat]
        expected.append((1 - eps) * nll[labels[n]] + eps * np.mean(nll))
    got = jax.jit(
        functools.partial(slj.softmax_cross_entropy_with_integer_labels, axis=axis, label_smoothing=eps)
    )(jnp.asarray(x), jnp.asarray(labels))
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-12)
