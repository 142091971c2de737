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
from smoothloss import linear_cross_entropy, linear_cross_entropy_and_grad
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


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cotangent_scales_the_gradient(framework, reduction):
    """The gradients made during the forward (mean/sum) are scaled by the incoming
    cotangent; "none" takes one cotangent per row. Against autodiff of the unchunked path."""
    h, w, b, y = _data((6,), {"ignore_index": -100}, True, seed=5)
    opts = {"label_smoothing": 0.1, "ignore_index": -100, "reduction": reduction}
    weights = np.linspace(-1.5, 2.5, 6) if reduction == "none" else 2.5
    args = (framework.asarray(h, "float64"), framework.asarray(w, "float64"), framework.asarray(y),
            framework.asarray(b, "float64"))
    c = framework.asarray(np.asarray(weights, dtype=np.float64), "float64")

    def chunked(h, w, y, b):
        return linear_cross_entropy(h, w, y, bias=b, chunk_size=4, **opts) * c

    def unchunked(h, w, y, b):
        return smoothloss.cross_entropy(_matmul_t(h, w) + b, y, **opts) * c

    expected = framework.grads(unchunked, args, (0, 1, 3))
    got = framework.grads(chunked, args, (0, 1, 3))
    for e, g in zip(expected, got):
        assert rel_err(framework.to_numpy(g), framework.to_numpy(e)) <= 1e-10


def test_torch_retain_graph_and_partial_needs():
    """A second backward of the same graph recomputes (the first one consumed the
    gradients made in the forward); only the inputs that require grad get one."""
    torch = pytest.importorskip("torch")
    h, w, b, y = (torch.as_tensor(a) for a in _data((9,), {}, True, seed=7))
    opts = {"label_smoothing": 0.2, "z_loss": 1e-3}
    ref = [t.clone().requires_grad_(True) for t in (h, w, b)]
    smoothloss.cross_entropy(ref[0] @ ref[1].T + ref[2], y, **opts).backward()

    hh, ww, bb = (t.clone().requires_grad_(True) for t in (h, w, b))
    loss = linear_cross_entropy(hh, ww, y, bias=bb, chunk_size=4, **opts)
    loss.backward(retain_graph=True)
    loss.backward()
    for got, r in zip((hh, ww, bb), ref):
        assert rel_err(got.grad, 2 * r.grad) <= 1e-12

    ww = w.clone().requires_grad_(True)
    linear_cross_entropy(h, ww, y, bias=b, chunk_size=4, **opts).backward()
    assert rel_err(ww.grad, ref[1].grad) <= 1e-12
    with torch.no_grad():
        value = linear_cross_entropy(hh, ww, y, bias=bb, chunk_size=4, **opts)
    assert value.grad_fn is None and rel_err(value, loss.detach()) <= 1e-12


def _plain_reference(h, w, y, eps, ignore, reduction, cot):
    """(loss, dh, dW) of the uniform label-smoothed loss of h @ w.T in plain float64
    NumPy, with rows labelled ``ignore`` contributing 0; ``cot``: the loss's cotangent."""
    z = h @ w.T
    v = z.shape[1]
    m = z.max(axis=1, keepdims=True)
    log_p = z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))
    valid = y != ignore
    safe = np.where(valid, y, 0)
    q = np.full(z.shape, eps / v)
    q[np.arange(len(y)), safe] += 1.0 - eps
    rows = -(q * log_p).sum(axis=1) * valid
    if reduction == "none":
        loss, s = rows, cot * valid
    elif reduction == "sum":
        loss, s = rows.sum(), cot * valid
    else:
        loss, s = rows.sum() / valid.sum(), cot * valid / valid.sum()
    dz = (np.exp(log_p) - q) * s[:, None]
    return loss, dz @ w, dz.T @ h


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("kept", ["most", "one"])
def test_torch_rows_with_ignored_labels(reduction, kept):
    """Eager torch makes no logits for rows whose label is ignored (their loss and
    gradient are 0): values and gradients, a second backward of the same graph, and
    int32 labels, against the plain float64 reference above."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(11)
    n, hdim, v = 19, 6, 13
    h, w = rng.normal(size=(n, hdim)), rng.normal(size=(v, hdim))
    y = rng.integers(0, v, size=n)
    if kept == "most":
        y[::3] = -100
    else:
        y[:] = -100
        y[7] = 4
    cot = rng.normal(size=n) if reduction == "none" else np.float64(1.7)
    ref_loss, ref_dh, ref_dw = _plain_reference(h, w, y, 0.1, -100, reduction, cot)
    for chunk in (1, 4, None):
        hh = torch.tensor(h, requires_grad=True)
        ww = torch.tensor(w, requires_grad=True)
        loss = linear_cross_entropy(
            hh, ww, torch.tensor(y, dtype=torch.int32), chunk_size=chunk, label_smoothing=0.1,
            ignore_index=-100, reduction=reduction,
        )
        assert rel_err(loss.detach().numpy(), ref_loss) <= 1e-12
        loss.backward(torch.tensor(cot), retain_graph=True)
        assert rel_err(hh.grad.numpy(), ref_dh) <= 1e-12 and rel_err(ww.grad.numpy(), ref_dw) <= 1e-12
        assert not hh.grad[torch.tensor(y == -100)].any()
        loss.backward(torch.tensor(cot))  # the second backward makes the valid rows' logits again
        assert rel_err(hh.grad.numpy(), 2 * ref_dh) <= 1e-12 and rel_err(ww.grad.numpy(), 2 * ref_dw) <= 1e-12
        # each chunk's gradient is made in place of its own logits, never of an input
        assert np.array_equal(hh.detach().numpy(), h) and np.array_equal(ww.detach().numpy(), w)


def test_tensorflow_with_and_without_tape():
    """Eager TensorFlow makes the gradients in the forward only under a recording tape;
    without one the value is the same, and a persistent tape can ask twice."""
    tf = pytest.importorskip("tensorflow")
    h, w, b, y = (tf.constant(a) for a in _data((9,), {}, True, seed=8))
    opts = {"label_smoothing": 0.1, "reduction": "sum"}
    plain = linear_cross_entropy(h, w, y, bias=b, chunk_size=4, **opts)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([h, w, b])
        loss = 3.0 * linear_cross_entropy(h, w, y, bias=b, chunk_size=4, **opts)
        ref = 3.0 * smoothloss.cross_entropy(tf.matmul(h, w, transpose_b=True) + b, y, **opts)
    assert rel_err(3.0 * plain, loss) <= 1e-12
    for _ in range(2):
        for got, e in zip(tape.gradient(loss, [h, w, b]), tape.gradient(ref, [h, w, b])):
            assert rel_err(got, e) <= 1e-12


def test_jax_jit_with_only_the_weight_traced():
    """Concrete hidden and labels closed over by a jitted function (only the weight is an
    argument): the label check sees staged values and is skipped, never a TracerBoolConversionError."""
    jax = pytest.importorskip("jax")
    h, w, _, y = _data((6,), {}, False, seed=9)
    ref_loss, _, ref_dw, _ = _reference_numpy(h, w, None, y, {})
    h, w, y = (jax.numpy.asarray(a) for a in (h, w, y))
    loss, dw = jax.jit(jax.value_and_grad(lambda w: linear_cross_entropy(h, w, y, chunk_size=4)))(w)
    assert rel_err(loss, ref_loss) <= 1e-5 and rel_err(dw, ref_dw) <= 1e-5  # float32 unless x64 is on


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_tensorflow_unknown_row_count(reduction):
    """A tf.function traced with an unknown batch axis (Keras after a partial batch) runs
    the chunks in a tf.while_loop: same value and gradients as the unchunked path, for
    row counts that do and do not fill the last chunk, and for no rows."""
    tf = pytest.importorskip("tensorflow")
    h, w, b, y = (tf.constant(a) for a in _data((10,), {"ignore_index": -100}, True, seed=11))
    opts = {"label_smoothing": 0.1, "ignore_index": -100, "reduction": reduction}
    spec = [tf.TensorSpec([None, H], tf.float64), tf.TensorSpec([None], y.dtype)]

    def value_and_grads(loss_fn, h, y):
        with tf.GradientTape() as tape:
            tape.watch([h, w, b])
            loss = loss_fn(h, y)
            c = tf.cast(tf.range(tf.size(loss)) + 1, loss.dtype)  # a different cotangent per row
            total = tf.reduce_sum(loss * c)
        return loss, tape.gradient(total, [h, w, b])

    chunked = tf.function(
        lambda h, y: value_and_grads(lambda h, y: linear_cross_entropy(h, w, y, bias=b, chunk_size=3, **opts), h, y),
        input_signature=spec,
    )
    for n in (10, 4, 0):
        loss, grads = chunked(h[:n], y[:n])
        ref_loss, ref_grads = value_and_grads(
            lambda h, y: smoothloss.cross_entropy(tf.matmul(h, w, transpose_b=True) + b, y, **opts), h[:n], y[:n]
        )
        assert loss.shape == ref_loss.shape
        assert np.allclose(loss, ref_loss, rtol=1e-12, atol=1e-14)
        for g, e in zip(grads, ref_grads):
            assert np.allclose(g, e, rtol=1e-12, atol=1e-14)


# ----------------------------------------------------------------------------- adapters


def _liger_reference(torch, h, w, y, b, eps, z, cap):
    """Liger's fused linear cross-entropy, written with torch float64 ops: logits
    (softcapped), torch's smoothed CE per token + z·lse², mean over labels != -100."""
    logits = h @ w.T + (0.0 if b is None else b)
    if cap is not None:
        logits = cap * torch.tanh(logits / cap)
    per = torch.nn.functional.cross_entropy(logits, y, label_smoothing=eps, reduction="none", ignore_index=-100)
    valid = y != -100
    per = per + z * torch.logsumexp(logits, dim=-1) ** 2 * valid
    return per.sum() / valid.sum()


@pytest.mark.parametrize("bias", [False, True])
def test_torch_liger_drop_in(bias):
    torch = pytest.importorskip("torch")
    from smoothloss.torch import LinearCrossEntropyLoss

    h, w, b, y = (None if a is None else torch.as_tensor(a) for a in _data((12,), {"ignore_index": -100}, bias, seed=12))
    loss_fn = LinearCrossEntropyLoss(lse_square_scale=1e-3, label_smoothing=0.1, softcap=5.0, chunk_size=5)
    args = [t.clone().requires_grad_(True) for t in (h, w) + ((b,) if bias else ())]
    ref_args = [t.detach().clone().requires_grad_(True) for t in args]
    loss = loss_fn(args[1], args[0], y, *args[2:])
    ref = _liger_reference(torch, ref_args[0], ref_args[1], y, ref_args[2] if bias else None, 0.1, 1e-3, 5.0)
    assert rel_err(loss.detach(), ref.detach()) <= 1e-12
    loss.backward()
    ref.backward()
    for a, r in zip(args, ref_args):
        assert rel_err(a.grad, r.grad) <= 1e-12
    assert "lse_square_scale=0.001" in repr(loss_fn)
    with pytest.raises(ValueError, match="label_smoothing"):
        LinearCrossEntropyLoss(label_smoothing=1.5)
    with pytest.raises(ValueError, match="chunk_size"):
        LinearCrossEntropyLoss(chunk_size=0)


def test_torch_functional_layouts_and_autocast():
    """(B, T, H) input, int32 labels, and inside torch.autocast: the tensors are cast to
    the autocast dtype (as F.linear would be) and the loss is float32."""
    torch = pytest.importorskip("torch")
    from smoothloss.torch import linear_cross_entropy as torch_lce

    h, w, b, y = (torch.as_tensor(a) for a in _data((2, 6), {"ignore_index": -100}, True, seed=13))
    got = torch_lce(h, w, y.to(torch.int32), b, label_smoothing=0.2, chunk_size=4)
    ref = torch.nn.functional.cross_entropy((h @ w.T + b).reshape(-1, V_CLASSES), y.reshape(-1), label_smoothing=0.2)
    assert rel_err(got, ref) <= 1e-12
    per_row = torch_lce(h, w, y, b, reduction="none")
    assert per_row.shape == y.shape
    h32, w32 = h.float().requires_grad_(True), w.float().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = torch_lce(h32, w32, y, label_smoothing=0.1)
    assert loss.dtype == torch.float32
    expected = torch.nn.functional.cross_entropy(
        (h32.detach().bfloat16() @ w32.detach().bfloat16().T).double().reshape(-1, V_CLASSES), y.reshape(-1),
        label_smoothing=0.1,
    )
    assert rel_err(loss.detach(), expected) <= 1e-5
    loss.backward()
    assert h32.grad.dtype == torch.float32 and w32.grad.shape == w32.shape
    with pytest.raises(TypeError, match="torch.Tensor"):
        torch_lce(h.numpy(), w, y)


def test_jax_adapter():
    jax = pytest.importorskip("jax")
    from smoothloss.jax import linear_cross_entropy as jax_lce

    h, w, b, y = _data((2, 5), {"ignore_index": -100}, True, seed=14)
    opts = {"label_smoothing": 0.1, "ignore_index": -100, "z_loss": 1e-3}
    ref_loss, ref_dh, ref_dw, ref_db = _reference_numpy(h, w, b, y, opts)
    jax.config.update("jax_enable_x64", True)  # as the suite's conftest does
    loss, grads = jax.jit(jax.value_and_grad(
        lambda h, w, b: jax_lce(h, w, y, bias=b, chunk_size=3, **opts), argnums=(0, 1, 2)
    ))(*(jax.numpy.asarray(a) for a in (h, w, b)))
    assert rel_err(loss, ref_loss) <= 1e-10
    for g, e in zip(grads, (ref_dh, ref_dw, ref_db)):
        assert rel_err(g, e) <= 1e-10
    assert rel_err(jax_lce(h, w, y, bias=b, **opts), ref_loss) <= 1e-10  # NumPy in


def test_tensorflow_adapter_with_variables():
    tf = pytest.importorskip("tensorflow")
    from smoothloss.tensorflow import linear_cross_entropy as tf_lce

    h, w, b, y = _data((8,), {}, True, seed=15)
    ref_loss, ref_dh, ref_dw, ref_db = _reference_numpy(h, w, b, y, {"label_smoothing": 0.1})
    wv, bv = tf.Variable(w), tf.Variable(b)
    hv = tf.constant(h)
    with tf.GradientTape() as tape:
        tape.watch(hv)
        loss = tf_lce(hv, wv, y, bias=bv, label_smoothing=0.1, chunk_size=3)
    grads = tape.gradient(loss, [hv, wv, bv])
    assert rel_err(loss, ref_loss) <= 1e-10
    for g, e in zip(grads, (ref_dh, ref_dw, ref_db)):
        assert rel_err(g, e) <= 1e-10


def test_torch_in_place_weight_accumulation_matches_the_composition():
    """The torch-native addmm_ accumulation of d_weight against the Array-API composition."""
    torch = pytest.importorskip("torch")
    from smoothloss.backends import native_kernels

    h, w, b, y = (torch.as_tensor(a) for a in _data((13,), {}, True, seed=16))
    native = linear_cross_entropy_and_grad(h, w, y, bias=b, chunk_size=4, label_smoothing=0.1)
    with native_kernels(False):
        composed = linear_cross_entropy_and_grad(h, w, y, bias=b, chunk_size=4, label_smoothing=0.1)
    assert rel_err(native[0], composed[0]) <= 1e-14
    for a, c in zip(native[1], composed[1]):
        assert rel_err(a, c) <= 1e-14


def test_tensorflow_jit_compile():
    """Inside tf.function(jit_compile=True) (XLA): the while loop takes fixed-size chunks
    and the shorter last chunk after it, so every shape is static."""
    tf = pytest.importorskip("tensorflow")
    h, w, b, y = _data((10,), {}, True, seed=17)
    ref_loss, ref_dh, ref_dw, ref_db = _reference_numpy(h, w, b, y, {"label_smoothing": 0.1})

    @tf.function(jit_compile=True)
    def step(h, w, b):
        with tf.GradientTape() as tape:
            tape.watch([h, w, b])
            loss = linear_cross_entropy(h, w, tf.constant(y), bias=b, chunk_size=4, label_smoothing=0.1)
        return loss, tape.gradient(loss, [h, w, b])

    loss, grads = step(tf.constant(h), tf.constant(w), tf.constant(b))
    assert rel_err(loss, ref_loss) <= 1e-10
    for g, e in zip(grads, (ref_dh, ref_dw, ref_db)):
        assert rel_err(g, e) <= 1e-10


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("convention", ["uniform", "others"])
def test_kl_option_matches_the_dense_loss(reduction, convention):
    """``kl=True`` is one of the options the chunked loss shares with the dense one."""
    rng = np.random.default_rng(5)
    h, W, y = rng.normal(size=(7, 4)), rng.normal(size=(9, 4)), rng.integers(0, 9, size=7)
    kw = dict(label_smoothing=0.2, convention=convention, reduction=reduction, kl=True)
    got = linear_cross_entropy(h, W, y, chunk_size=3, **kw)
    want = smoothloss.cross_entropy(h @ W.T, y, **kw)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)
    # with kl the minimum is 0: the loss against the smoothed target itself is >= 0
    assert np.all(np.asarray(got) >= -1e-12)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_class_weight_matches_pytorch_weighted_cross_entropy(reduction):
    """``class_weight`` is the dense loss's ``weight`` (PyTorch's semantics: every class
    weight in the smoothing term, the mean over Σ_valid w_y), chunk by chunk, gradients
    included; the reference is float64 ``F.cross_entropy`` on the dense logits."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    gen = torch.Generator().manual_seed(3)
    h = torch.randn(13, 6, dtype=torch.float64, generator=gen, requires_grad=True)
    W = torch.randn(9, 6, dtype=torch.float64, generator=gen, requires_grad=True)
    b = torch.randn(9, dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.rand(9, dtype=torch.float64, generator=gen) + 0.1
    y = torch.randint(0, 9, (13,), generator=gen)
    y[::4] = -100
    got = smoothloss.linear_cross_entropy(h, W, y, bias=b, chunk_size=4, label_smoothing=0.2, ignore_index=-100,
                                          reduction=reduction, class_weight=w)
    want = F.cross_entropy(h @ W.T + b, y, weight=w, ignore_index=-100, label_smoothing=0.2, reduction=reduction)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    g_got = torch.autograd.grad(got.sum(), (h, W, b))
    g_want = torch.autograd.grad(want.sum(), (h, W, b))
    for a, c in zip(g_got, g_want):
        torch.testing.assert_close(a, c, rtol=1e-12, atol=1e-12)


def test_class_weight_numpy_equals_dense():
    """NumPy (no autodiff): the chunked loss with class weights equals the dense loss."""
    rng = np.random.default_rng(5)
    h, W, w = rng.normal(size=(7, 3)), rng.normal(size=(5, 3)), rng.uniform(0.5, 2.0, size=5)
    y = np.array([0, 4, -1, 2, 3, 1, -1])
    got = smoothloss.linear_cross_entropy(h, W, y, chunk_size=3, label_smoothing=0.1, ignore_index=-1,
                                          class_weight=w, z_loss=1e-3)
    want = smoothloss.cross_entropy(h @ W.T, y, label_smoothing=0.1, ignore_index=-1, weight=w, z_loss=1e-3)
    assert abs(float(got) - float(want)) <= 1e-13 * abs(float(want))


def test_row_statistics_are_dense_softmax_facts():
    """``_linear.row_statistics``: log-sum-exp, first argmax, label probability (0 when
    ignored), against NumPy on the dense soft-capped logits."""
    from smoothloss import _linear
    from smoothloss.backends import framework

    rng = np.random.default_rng(6)
    h, W, b = rng.normal(size=(6, 4)), rng.normal(size=(8, 4)), rng.normal(size=8)
    y = np.array([1, 7, -100, 0, 3, 5])
    valid, lse, arg, p_y = _linear.row_statistics(framework(h), h, W, b, y, -100, 5.0, 4)
    z = 5.0 * np.tanh((h @ W.T + b) / 5.0)
    ref_lse = np.log(np.exp(z).sum(-1))
    np.testing.assert_allclose(lse, ref_lse, rtol=1e-14)
    assert np.array_equal(arg, z.argmax(-1)) and np.array_equal(valid, y != -100)
    ref_p = np.where(y != -100, np.exp(z[np.arange(6), np.where(y != -100, y, 0)] - ref_lse), 0.0)
    np.testing.assert_allclose(p_y, ref_p, rtol=1e-13)
