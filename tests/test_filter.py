"""Gradient filtering of the chunked linear loss (``filter_eps``), on every backend.

The reference is written here in float64 NumPy from the definition
(smoothloss/_filter.py): the exact logits' gradient (the dense closed form, as
tests/test_linear.py uses it), and, in each block of 128 rows × 128 classes where every
valid row's (1 + 2·z_loss·lse)·p is below ``filter_eps`` and no valid row's label falls,
the softmax term dropped: the block's gradient is then -s·off per row (0 without
smoothing). The data make some blocks skipped and some kept, and the filtered gradient
differ from the exact one by far more than the tolerance, so a filter that does nothing,
or too much, fails.
"""

from __future__ import annotations

import numpy as np
import pytest

import smoothloss
from smoothloss import linear_cross_entropy, linear_cross_entropy_and_grad
from smoothloss.testing import rel_err

B = 128
N, H, V = 300, 8, 400  # 3 blocks of rows (the last 44 rows), 4 of classes (the last 16)
EPS = 1e-6
IGNORE = -100

CASES = [
    pytest.param({}, False, None, id="plain-mean"),
    pytest.param({"ignore_index": IGNORE, "z_loss": 1e-3, "reduction": "sum"}, True, 200, id="ignore-zloss-sum-bias"),
    pytest.param({"label_smoothing": 0.1, "ignore_index": IGNORE, "reduction": "none"}, True, 1, id="smooth-none"),
    pytest.param({"label_smoothing": 0.2, "convention": "others"}, False, 500, id="smooth-others-mean"),
    pytest.param({"softcap": 20.0, "ignore_index": IGNORE}, False, None, id="softcap-mean"),
]


def _data(seed: int = 0):
    """Logits that fall with the class index (a frequency-sorted vocabulary): the first
    class blocks hold the probability mass, the last ones are negligible for most rows.
    Row block 1 (rows 128-255) has one row whose label is in class block 2; row 260 has a
    label in the last, partial class block; every 7th row is ignored."""
    rng = np.random.default_rng(seed)
    h = rng.normal(size=(N, H))
    w = rng.normal(scale=0.5, size=(V, H))
    h[:, -1] = 1.0
    w[:, -1] = -4.0 * np.log1p(np.arange(V))  # logit ≈ -4·log(1 + c)
    b = rng.normal(scale=0.1, size=(V,))
    y = rng.integers(0, 40, size=N)
    y[140], y[260] = 300, 390
    y[::7] = IGNORE
    return h, w, b, y


def _labels(y, opts):
    return y if opts.get("ignore_index") is not None else np.where(y == IGNORE, 5, y)


def reference(h, w, b, y, opts, eps):
    """(loss, (dh, dW, db), skipped blocks) of the filtered gradient, float64, at cotangent 1."""
    z = h @ w.T + (0.0 if b is None else b)
    loss, g = smoothloss.cross_entropy_and_grad(z, y, **opts)  # exact (sum of the rows' losses for "none")
    cap = opts.get("softcap")
    x = z if cap is None else cap * np.tanh(z / cap)
    lse = np.log(np.sum(np.exp(x - x.max(-1, keepdims=True)), -1)) + x.max(-1)
    p = np.exp(x - lse[:, None]) * np.abs(1 + 2 * opts.get("z_loss", 0.0) * lse)[:, None]
    valid = y != opts.get("ignore_index", object())
    n_valid = valid.sum()
    s = valid * {"mean": 1.0 / n_valid, "sum": 1.0, "none": 1.0}[opts.get("reduction", "mean")]
    eps_s = opts.get("label_smoothing", 0.0)
    off = 0.0 if eps_s == 0 else (eps_s / V if opts.get("convention", "uniform") == "uniform" else eps_s / (V - 1))
    g = g.copy()
    skipped = 0
    for r0 in range(0, N, B):
        rows = slice(r0, min(r0 + B, N))
        for c0 in range(0, V, B):
            cls = slice(c0, min(c0 + B, V))
            in_block = valid[rows] & (y[rows] >= c0) & (y[rows] < c0 + B)
            if np.all(p[rows, cls][valid[rows]] < eps) and not in_block.any():
                g[rows, cls] = (-s[rows] * off)[:, None]
                skipped += 1
    return loss, (g @ w, g.T @ h, g.sum(0)), skipped


@pytest.mark.parametrize(("opts", "bias", "chunk"), CASES)
def test_filtered_gradient_matches_the_definition(backend, opts, bias, chunk):
    h, w, b, y = _data()
    y = _labels(y, opts)
    b = b if bias else None
    loss_ref, grads_ref, skipped = reference(h, w, b, y, opts, EPS)
    _, exact_grads, none_skipped = reference(h, w, b, y, opts, 0.0)
    assert 0 < skipped < 12 and none_skipped == 0  # some blocks skipped, some kept
    assert rel_err(grads_ref[1], exact_grads[1]) > 1e-9  # the filter changes the weight's gradient
    args = [backend.asarray(h, "float64"), backend.asarray(w, "float64"), backend.asarray(y)]
    if b is not None:
        args.append(backend.asarray(b, "float64"))
    kw = dict(chunk_size=chunk, filter_eps=EPS, **opts)

    def filtered(h, w, y, b=None):
        return linear_cross_entropy(h, w, y, bias=b, **kw)

    assert rel_err(backend.to_numpy(backend.call(filtered, *args)), loss_ref) <= 1e-12  # the loss is exact
    want = [grads_ref[0], grads_ref[1]] + ([grads_ref[2]] if b is not None else [])
    if backend.has_autodiff:
        got = backend.grads(filtered, tuple(args), (0, 1) if b is None else (0, 1, 3))
        for name, g, e in zip(("hidden", "weight", "bias"), got, want):
            assert rel_err(backend.to_numpy(g), e) <= 1e-12, name
        if backend.traced:
            return
    loss, grads = backend.call(lambda h, w, y, b=None: linear_cross_entropy_and_grad(h, w, y, bias=b, **kw), *args)
    assert rel_err(backend.to_numpy(loss), loss_ref) <= 1e-12
    for name, g, e in zip(("hidden", "weight", "bias"), grads, want):
        assert rel_err(backend.to_numpy(g), e) <= 1e-12, name


@pytest.mark.parametrize("filter_eps", [None, 0.0])
def test_off_and_zero_are_exact(filter_eps):
    h, w, b, y = _data()
    opts = {"ignore_index": IGNORE, "label_smoothing": 0.1}
    _, exact, _ = reference(h, w, b, y, opts, 0.0)
    _, grads = linear_cross_entropy_and_grad(h, w, y, bias=b, filter_eps=filter_eps, **opts)
    for g, e in zip(grads, exact):
        assert rel_err(g, e) <= 1e-12


def test_auto_is_the_dtype_epsilon_over_32():
    """CCE's "auto": finfo(dtype).eps / 32, here float32's 3.7e-9."""
    h, w, b, y = _data()
    y = _labels(y, {})
    w[:, -1] *= 2  # steeper: blocks below float32's threshold
    h32, w32 = h.astype(np.float32), w.astype(np.float32)
    auto = linear_cross_entropy_and_grad(h32, w32, y, filter_eps="auto")[1]
    explicit = linear_cross_entropy_and_grad(h32, w32, y, filter_eps=float(np.finfo(np.float32).eps) / 32)[1]
    for a, e in zip(auto[:2], explicit[:2]):
        np.testing.assert_array_equal(a, e)
    _, want, skipped = reference(h32.astype(np.float64), w32.astype(np.float64), None, y, {},
                                 float(np.finfo(np.float32).eps) / 32)
    assert skipped > 0
    assert rel_err(auto[1], want[1]) <= 1e-5


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"filter_eps": "exact"}, ValueError, "filter_eps"),
        ({"filter_eps": -1e-3}, ValueError, "filter_eps"),
        ({"filter_eps": True}, ValueError, "filter_eps"),
        ({"filter_eps": 1e-6, "softcap": 5.0, "label_smoothing": 0.1}, NotImplementedError, "softcap"),
        ({"filter_eps": 1e-6, "class_weight": np.ones(V)}, NotImplementedError, "class_weight"),
    ],
)
def test_argument_errors(kwargs, error, match):
    h, w, _, y = _data()
    with pytest.raises(error, match=match):
        linear_cross_entropy(h, w, np.abs(y), **kwargs)


@pytest.mark.parametrize(
    ("impl", "filter_e_grad", "filtered"),
    [("cce", True, True), ("cce_kahan_full_c", True, True), ("torch_compile", True, False),
     ("cce_exact", True, False), ("cce", False, False)],
)
def test_cut_cross_entropy_drop_in_filters_where_cce_does(impl, filter_e_grad, filtered):
    """CCE's impls and presets: "cce" filters with the given filter_eps (here 1e-6, or the
    presets' "auto"), "torch_compile" and the exact presets do not; filter_e_grad=False
    gives the exact gradients. Compared with the float64 reference of the definition."""
    torch = pytest.importorskip("torch")
    from smoothloss.cut_cross_entropy import linear_cross_entropy as cce_loss

    h, w, b, y = _data()
    w[:, -1] *= 3 if impl == "cce_kahan_full_c" else 1  # below float64's "auto" threshold, 6.9e-18
    y = _labels(y, {"ignore_index": IGNORE})
    eps = float(np.finfo(np.float64).eps) / 32 if impl == "cce_kahan_full_c" else EPS
    _, want, skipped = reference(h, w, b, y, {"ignore_index": IGNORE}, eps if filtered else 0.0)
    assert skipped > 0 or not filtered
    e = torch.from_numpy(h).requires_grad_(True)
    c = torch.from_numpy(w).requires_grad_(True)
    bias = torch.from_numpy(b).requires_grad_(True)
    cce_loss(e, c, torch.from_numpy(y), bias, impl=impl, filter_eps=EPS, filter_e_grad=filter_e_grad).backward()
    for got, e_ in zip((e.grad, c.grad, bias.grad), want):
        assert rel_err(got.numpy(), e_) <= 1e-12
