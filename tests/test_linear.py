"""Chunked linear cross-entropy against the unchunked path, on every backend.

The unchunked path is ``cross_entropy(hidden @ W.T + b, labels, ...)``: differentiated by
the framework's autodiff (through the core's registered gradient) on torch, JAX and
TensorFlow, and by ``cross_entropy_and_grad`` with the chain rule written out on NumPy and
array-api-strict. Value and the gradients for hidden, weight and bias must agree within
1e-10 (float64) / 1e-5 (float32), for every chunk size.
"""

from __future__ import annotations

import numpy as np
import pytest

import smoothloss
from smoothloss._linear import linear_cross_entropy, linear_cross_entropy_and_grad
from smoothloss.backends import array_namespace
from smoothloss.testing import rel_err, tolerance

V_CLASSES, H = 11, 5

# (id, leading shape of hidden, options)
CONFIGS = [
    ("plain", (7,), {}),
    ("smooth-uniform", (7,), {"label_smoothing": 0.1}),
    ("smooth-others-sum", (2, 3), {"label_smoothing": 0.2, "convention": "others", "reduction": "sum"}),
    ("ignore-mean", (7,), {"label_smoothing": 0.1, "ignore_index": -100}),
    ("ignore-none", (2, 3), {"label_smoothing": 0.1, "ignore_index": -100, "reduction": "none"}),
    ("zloss-softcap-sum", (7,), {"z_loss": 1e-2, "softcap": 2.0, "label_smoothing": 0.1, "reduction": "sum"}),
    ("everything-none", (7,), {
        "label_smoothing": 0.3, "convention": "others", "ignore_index": 3, "z_loss": 1e-3,
        "softcap": 3.0, "reduction": "none",
    }),
    ("all-ignored", (4,), {"ignore_index": -1}),
]
CHUNKS = [1, 3, None, 100]  # None: N itself (one chunk)
# bias given or not alternates, and the chunk size cycles, over the configurations
CASES = [
    pytest.param(cid, lead, opts, k % 2 == 1, CHUNKS[k % len(CHUNKS)], id=f"{cid}-{'bias' if k % 2 else 'nobias'}-chunk{CHUNKS[k % len(CHUNKS)] or 'N'}")
    for k, (cid, lead, opts) in enumerate(CONFIGS)
]


def _data(lead, opts, bias, seed=0):
    rng = np.random.default_rng(seed)
    h = rng.normal(size=(*lead, H))
    w = rng.normal(size=(V_CLASSES, H)) * 0.7
    b = rng.normal(size=(V_CLASSES,)) if bias else None
    y = rng.integers(0, V_CLASSES, size=lead)
    ignore = opts.get("ignore_index")
    if ignore is not None:
        flat = y.reshape(-1)
        if ignore == -1:  # the all-ignored case
            flat[:] = ignore
        else:
            flat[1::3] = ignore
    return h, w, b, y


def _reference_numpy(h, w, b, y, opts):
    """(loss, dh, dW, db) of the unchunked path, in NumPy float64."""
    h2 = h.reshape(-1, h.shape[-1])
    z = h2 @ w.T + (0.0 if b is None else b)
    loss, g = smoothloss.cross_entropy_and_grad(z, y.reshape(-1), **opts)
    if opts.get("reduction") == "none":
        loss = np.asarray(loss).reshape(y.shape)
    return loss, (g @ w).reshape(h.shape), g.T @ h2, None if b is None else g.sum(axis=0)


def _matmul_t(h, w):
    xp = array_namespace(h, w)
    return xp.matmul(h, xp.moveaxis(w, 0, 1))


def _check(backend, lead, opts, bias, chunk, dtype="float64"):
    if not backend.supports(dtype):
        pytest.skip(f"{backend.name} has no {dtype}")
    h, w, b, y = _data(lead, opts, bias)
    h, w = h.astype(dtype), w.astype(dtype)
    b = None if b is None else b.astype(dtype)
    n = int(np.prod(lead))
    chunk = n if chunk is None else chunk
    tol = tolerance(dtype)
    args = [backend.asarray(h, dtype), backend.asarray(w, dtype), backend.asarray(y)]
    if b is not None:
        args.append(backend.asarray(b, dtype))

    def chunked(h, w, y, b=None):
        return linear_cross_entropy(h, w, y, bias=b, chunk_size=chunk, **opts)

    def unchunked(h, w, y, b=None):
        z = _matmul_t(h, w)
        z = z if b is None else z + b
        return smoothloss.cross_entropy(z, y, **opts)

    ref_loss, ref_dh, ref_dw, ref_db = _reference_numpy(
        h.astype(np.float64), w.astype(np.float64), None if b is None else b.astype(np.float64), y, opts
    )
    value = backend.to_numpy(backend.call(chunked, *args))
    assert value.shape == np.shape(ref_loss)
    assert rel_err(value, ref_loss) <= tol
    if backend.has_autodiff:
        # against the framework's autodiff through the core's registered gradient
        diff = (0, 1) if b is None else (0, 1, 3)
        expected = [backend.to_numpy(g) for g in backend.grads(unchunked, tuple(args), diff)]
        got = [backend.to_numpy(g) for g in backend.grads(chunked, tuple(args), diff)]
        for e, g in zip(expected, got):
            assert rel_err(g, e) <= tol
        if backend.traced:  # the closed form traced: test_chunk_size_does_not_matter
            return
    # the closed form (written once) against the NumPy chain rule of the unchunked path
    loss, (dh, dw, db) = backend.call(
        lambda h, w, y, b=None: linear_cross_entropy_and_grad(h, w, y, bias=b, chunk_size=chunk, **opts), *args
    )
    assert (db is None) == (b is None)
    assert rel_err(backend.to_numpy(loss), ref_loss) <= tol
    assert rel_err(backend.to_numpy(dh), ref_dh) <= tol
    assert rel_err(backend.to_numpy(dw), ref_dw) <= tol
    if b is not None:
        assert rel_err(backend.to_numpy(db), ref_db) <= tol


@pytest.mark.parametrize(("cid", "lead", "opts", "bias", "chunk"), CASES)
def test_equals_unchunked(backend, cid, lead, opts, bias, chunk):
    _check(backend, lead, opts, bias, chunk)


def test_float32(backend):
    _check(backend, (7,), {"label_smoothing": 0.1, "ignore_index": -100}, True, 3, "float32")


def test_chunk_size_does_not_matter(backend):
    """Chunk sizes 1, 5 (uneven chunks) and the default (> N) give the same loss and gradients."""
    opts = {"label_smoothing": 0.1, "convention": "others", "ignore_index": -100, "z_loss": 1e-3}
    h, w, b, y = _data((3, 4), opts, True, seed=1)
    args = [backend.asarray(h, "float64"), backend.asarray(w, "float64"), backend.asarray(y),
            backend.asarray(b, "float64")]
    results = []
    for chunk in (1, 5, None):
        out = backend.call(
            lambda h, w, y, b: linear_cross_entropy_and_grad(h, w, y, bias=b, chunk_size=chunk, **opts), *args
        )
        loss, grads = out
        results.append([backend.to_numpy(loss)] + [backend.to_numpy(g) for g in grads])
    for other in results[1:]:
        for a, e in zip(other, results[0]):
            assert rel_err(a, e) <= 1e-13


def test_mean_over_no_valid_rows_is_zero(array_backend):
    h, w, b, y = _data((4,), {"ignore_index": -1}, True)
    args = [array_backend.asarray(h), array_backend.asarray(w), array_backend.asarray(y)]
    loss, (dh, dw, db) = linear_cross_entropy_and_grad(*args, bias=array_backend.asarray(b), ignore_index=-1)
    assert float(loss) == 0.0
    assert not np.any(array_backend.to_numpy(dh)) and not np.any(array_backend.to_numpy(dw))
    assert not np.any(array_backend.to_numpy(db))


def test_empty_hidden():
    loss, (dh, dw, db) = linear_cross_entropy_and_grad(np.zeros((0, 3)), np.ones((4, 3)), np.zeros((0,), int))
    assert float(loss) == 0.0 and dh.shape == (0, 3) and not dw.any() and db is None
    none = linear_cross_entropy(np.zeros((2, 0, 3)), np.ones((4, 3)), np.zeros((2, 0), int), reduction="none")
    assert none.shape == (2, 0)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"w": np.ones((4, 2))}, ValueError),
        ({"y": np.zeros((5,))}, TypeError),
        ({"y": np.zeros((4,), int)}, ValueError),
        ({"y": np.array([0, 1, 2, 4, 0])}, ValueError),
        ({"bias": np.ones(3)}, ValueError),
        ({"chunk_size": 0}, ValueError),
        ({"label_smoothing": 1.5}, ValueError),
        ({"reduction": "avg"}, ValueError),
    ],
)
def test_argument_errors(kwargs, error):
    kw = dict(kwargs)
    w, y = kw.pop("w", np.ones((4, 3))), kw.pop("y", np.zeros((5,), int))
    with pytest.raises(error):
        linear_cross_entropy(np.zeros((5, 3)), w, y, **kw)


def test_torch_saves_no_logits():
    torch = pytest.importorskip("torch")
    n, v = 12, 50
    h = torch.randn(n, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(v, 8, dtype=torch.float64, requires_grad=True)
    b = torch.randn(v, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, v, (n,))
    saved = []

    def pack(t):
        saved.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = linear_cross_entropy(h, w, y, bias=b, chunk_size=5, label_smoothing=0.1, softcap=4.0)
    loss.backward()
    assert saved and all(int(np.prod(s)) < n * v for s in saved), saved
    assert (n, v) not in saved
    # the unchunked path does save N×V (the check can see it)
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        smoothloss.cross_entropy(h @ w.T + b, y, label_smoothing=0.1)
    assert (n, v) in saved
    assert h.grad.shape == h.shape and w.grad.shape == w.shape and b.grad.shape == b.shape


def test_jax_jit_value_and_grad():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    h, w, b, y = (jnp.asarray(a) for a in _data((2, 5), {"ignore_index": -100}, True, seed=3))
    opts = {"label_smoothing": 0.1, "ignore_index": -100, "z_loss": 1e-3}

    def chunked(h, w, b):
        return linear_cross_entropy(h, w, y, bias=b, chunk_size=4, **opts)

    def unchunked(h, w, b):
        return smoothloss.cross_entropy(h @ w.T + b, y, **opts)

    got = jax.jit(jax.value_and_grad(chunked, argnums=(0, 1, 2)))(h, w, b)
    expected = jax.value_and_grad(unchunked, argnums=(0, 1, 2))(h, w, b)
    assert rel_err(got[0], expected[0]) <= 1e-10
    for g, e in zip(got[1], expected[1]):
        assert rel_err(g, e) <= 1e-10
    # no N×V array among the residuals the jitted backward keeps
    _, vjp = jax.vjp(chunked, h, w, b)
    leaves = jax.tree_util.tree_leaves(vjp)
    assert leaves and all(leaf.size < 10 * V_CLASSES for leaf in leaves if hasattr(leaf, "size"))
