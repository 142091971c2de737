"""The compiled path on TensorFlow: the core's closed-form backward compiled by XLA
(``tf.function(jit_compile=True)``), eagerly and nested in a caller's ``tf.function``;
the forward's statistics off TensorFlow's fused log_softmax on short rows, off the sums
over x - m and the softmax on long ones.

Every case of tests/test_compiled.py runs through the XLA kernel and through the
eager ones; both are compared with each other (float64: 1e-10, float32: 1e-5 relative)
and with the independent float64 reference.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import smoothloss
from smoothloss.testing import reference_cross_entropy, reference_linear_cross_entropy, rel_err, tolerance
from smoothloss.testing.cases import LINEAR_COMPILED_OPTIONS, compiled_cases, linear_compiled_problem

tf = pytest.importorskip("tensorflow")
tf_binding = pytest.importorskip("smoothloss.backends.tensorflow_compiled")
tf_facts = pytest.importorskip("smoothloss.backends.tensorflow")

CASES = compiled_cases()

# pytest -n auto (README): XLA's compiled kernels are cached per process
pytestmark = pytest.mark.xdist_group("compiled-tensorflow")


def _tf_loss_and_grads(x, t, opts, graph=False):
    def run(x, t, w):
        o = dict(opts, **({"weight": w} if w is not None else {}))
        with tf.GradientTape() as tape:
            tape.watch([x, t] + ([w] if w is not None else []))
            loss = smoothloss.cross_entropy(x, t, **o)
            n = tf.size(loss)
            cot = tf.reshape(tf.linspace(tf.constant(0.5, loss.dtype), 1.5, n), tf.shape(loss))
            total = tf.reduce_sum(loss * cot)
        sources = [x] + ([t] if t.dtype.is_floating else []) + ([w] if w is not None else [])
        return [loss, *tape.gradient(total, sources)], cot

    fn = tf.function(run) if graph else run
    return fn(x, t, opts.get("weight"))


# every case eagerly; a few inside a caller's tf.function (nested XLA clusters)
_TF_CASES = [pytest.param(c, False, id=f"{c.id}-eager") for c in CASES] + [
    pytest.param(c, True, id=f"{c.id}-tf.function")
    for c in CASES if c.option_set in ("ls-weight-ignore", "everything-uniform-none") or c.id.startswith("kl-prob")
]


@pytest.mark.parametrize("rows", ["short", "long"])
@pytest.mark.parametrize("case, graph", _TF_CASES)
def test_xla_matches_eager_and_reference_tensorflow(case, graph, rows, mode, driver_for, monkeypatch):
    # both forms of the forward statistics: off log_softmax (short rows), and off the sums
    # over x - m and the softmax (long rows; the grid's rows are short, so made long here)
    if rows == "long":
        monkeypatch.setattr(tf_facts, "SHORT_ROWS", 0)
    driver = driver_for("tensorflow")
    logits, targets, opts = case.make()
    x = driver.asarray(logits, case.dtype)
    t = driver.asarray(targets, None if case.targets == "int" else case.dtype)
    opts = dict(opts)
    opts.pop("weight", None)
    w = None if "weight" not in case.make()[2] else driver.asarray(case.make()[2]["weight"], case.dtype)
    if w is not None:
        opts["weight"] = w
    mode("never")
    eager, cot = _tf_loss_and_grads(x, t, opts, graph)
    mode("always")
    calls = dict(tf_binding.XLA.calls)
    compiled, _ = _tf_loss_and_grads(x, t, opts, graph)
    assert tf_binding.XLA.broken is None
    if not graph:
        assert tf_binding.XLA.calls["backward"] == calls["backward"] + 1  # the backward ran compiled
    tol = tolerance(case.dtype)
    for c, e in zip(compiled, eager):
        assert c.dtype == e.dtype and c.shape == e.shape
        assert rel_err(np.asarray(c, np.float64), np.asarray(e, np.float64)) <= tol
    ref_loss, ref_grad = reference_cross_entropy(logits, targets, **case.make()[2])
    assert rel_err(np.asarray(compiled[0], np.float64), ref_loss) <= tol
    if opts.get("reduction") != "none":
        assert rel_err(np.asarray(compiled[1], np.float64), ref_grad * float(cot)) <= tol


def test_xla_in_a_graph_follows_the_mode_and_the_known_size(mode, monkeypatch):
    seen = []
    monkeypatch.setattr(tf_binding, "COMPILE_THRESHOLD", 40)
    real = tf_binding.XLA.kernels_by_name["backward"][0]

    def spy(rank, *args):  # (the compiled kernels take the first array's rank first)
        seen.append(args[0].shape.as_list())
        return real(rank, *args)

    _replace_kernel(monkeypatch, "backward", spy)
    mode("auto")

    def loss(x, y):
        with tf.GradientTape() as tape:
            tape.watch(x)
            value = smoothloss.cross_entropy(x, y, label_smoothing=0.1)
        tape.gradient(value, x)
        return value

    y = tf.constant([0, 1, 2, 3])
    for signature in ([4, 10], [4, 9], [None, 10]):  # 40 logits, 36, and an unknown batch
        specs = [tf.TensorSpec(signature, tf.float64), tf.TensorSpec(signature[:1], tf.int32)]
        f = tf.function(loss, input_signature=specs)
        x = tf.constant(np.random.default_rng(0).normal(size=(4, signature[1])))
        value = f(x, y)
        ref, _ = reference_cross_entropy(x.numpy(), y.numpy(), label_smoothing=0.1)
        assert rel_err(value.numpy(), ref) <= 1e-10
    assert seen == [[4, 10]]  # only the call known to hold at least 40 logits
    mode("always")
    f = tf.function(loss, input_signature=[tf.TensorSpec([None, 10], tf.float64), tf.TensorSpec([None], tf.int32)])
    f(tf.zeros((4, 10), tf.float64), y)
    assert seen[-1] == [None, 10]


@pytest.mark.parametrize("options", [{"label_smoothing": 0.1}, {"label_smoothing": 0.2, "ignore_index": 3}])
def test_xla_with_unknown_class_count_and_new_sizes(options, mode):
    """A graph traced with an unknown batch and class axis, and the XLA functions
    retraced with relaxed shapes when a second size comes (reduce_retracing)."""
    mode("always")
    spec = [tf.TensorSpec([None, None], tf.float64), tf.TensorSpec([None], tf.int64)]

    @tf.function(input_signature=spec)
    def step(x, y):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = smoothloss.cross_entropy(x, y, **options)
        return loss, tape.gradient(loss, x)

    rng = np.random.default_rng(5)
    for B, K in [(6, 4), (9, 13), (3, 7)]:
        x = rng.normal(size=(B, K))
        y = rng.integers(0, K, B)
        y[0] = options.get("ignore_index", 0)
        loss, g = step(tf.constant(x), tf.constant(y))
        ref_loss, ref_grad = reference_cross_entropy(x, y, **options)
        assert rel_err(loss.numpy(), ref_loss) <= 1e-10
        assert rel_err(g.numpy(), ref_grad) <= 1e-10


def _replace_kernel(monkeypatch, name, compiled):
    """The XLA binding's compiled kernel ``name`` ("backward") replaced by ``compiled``."""
    monkeypatch.setitem(tf_binding.XLA.kernels_by_name, name, (compiled, tf_binding.XLA.kernels_by_name[name][1]))


def _failing_xla(mode, monkeypatch, error, name="backward"):
    """Compiling on, the XLA binding not yet broken, and its kernel ``name`` raising ``error``."""
    mode("always")
    monkeypatch.setattr(tf_binding.XLA, "broken", None)

    def fail(*args):
        raise error

    _replace_kernel(monkeypatch, name, fail)


def test_xla_failure_warns_once_and_runs_eager(mode, monkeypatch):
    _failing_xla(mode, monkeypatch, tf.errors.UnimplementedError(None, None, "XLA is not available here\nmore"))
    x = tf.constant(np.random.default_rng(1).normal(size=(5, 3)))
    y = tf.constant([0, 1, 2, 0, 1])
    ref_loss, ref_grad = reference_cross_entropy(x.numpy(), y.numpy(), label_smoothing=0.2)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        loss = smoothloss.cross_entropy(x, y, label_smoothing=0.2)
    with pytest.warns(RuntimeWarning, match=r"could not compile its kernels with XLA \(UnimplementedError: XLA is not"):
        g = tape.gradient(loss, x)  # the backward is the compiled kernel
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per process: no second warning
        again = tape.gradient(loss, x)
    assert "XLA is not available here" in tf_binding.XLA.broken
    assert rel_err(loss.numpy(), ref_loss) <= 1e-10
    for value in (g, again):
        assert rel_err(value.numpy(), ref_grad) <= 1e-10


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "tf.function"])
@pytest.mark.parametrize("name", list(LINEAR_COMPILED_OPTIONS))
def test_linear_chunks_run_the_xla_kernels(name, graph, mode):
    """Each chunk of the linear loss runs the XLA kernels, eagerly and inside a caller's
    tf.function (in its while loop), and equals the eager kernels and the reference."""
    options = LINEAR_COMPILED_OPTIONS[name]
    h_np, W_np, b_np, y_np = linear_compiled_problem()

    def step(h, W, b, y):
        with tf.GradientTape() as tape:
            tape.watch([h, W, b])
            loss = smoothloss.linear_cross_entropy(h, W, y, bias=b, chunk_size=4, **options)
            total = tf.reduce_sum(loss)
        return (loss, *tape.gradient(total, [h, W, b]))

    results = {}
    for m in ("never", "always"):
        mode(m)
        run = tf.function(step) if graph else step  # (a function keeps the mode it was traced under)
        calls = tf_binding.XLA.calls["backward"]
        results[m] = [np.asarray(a, np.float64) for a in run(*map(tf.constant, (h_np, W_np, b_np, y_np)))]
        if not graph:  # 3 chunks, each through the backward kernel
            assert tf_binding.XLA.calls["backward"] - calls == (3 if m == "always" else 0)
    assert tf_binding.XLA.broken is None
    ref = reference_linear_cross_entropy(h_np, W_np, b_np, y_np, **options)
    for c, e, r in zip(results["always"], results["never"], ref):
        assert rel_err(c, e) <= 1e-10
        assert rel_err(c, r) <= 1e-10


def test_out_of_memory_is_raised_not_taken_for_an_xla_failure(mode, monkeypatch):
    _failing_xla(mode, monkeypatch, tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor"))
    x = tf.constant(np.random.default_rng(1).normal(size=(5, 3)))
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = smoothloss.cross_entropy(x, tf.constant([0, 1, 2, 0, 1]), label_smoothing=0.1)
    with pytest.raises(tf.errors.ResourceExhaustedError):
        tape.gradient(loss, x)
    assert tf_binding.XLA.broken is None  # compiling stays on


@pytest.mark.parametrize("compiled", ["never", "always"])
@pytest.mark.parametrize(
    "hostile",
    ["offset", "masked-class", "masked-class-weight-zero", "weight-ignore"],
)
def test_long_rows_forward_on_hostile_inputs(hostile, compiled, mode, monkeypatch):
    """The long-row forward (sums over x - m, then the softmax) on float32 logits with a
    common offset of 10⁴ (lse itself is never formed), a -inf masked class, and a class
    weight with ignored positions: the loss and gradient of the float64 reference."""
    monkeypatch.setattr(tf_facts, "SHORT_ROWS", 0)
    mode(compiled)
    rng = np.random.default_rng(11)
    x = rng.normal(size=(6, 7)).astype(np.float32)
    y = np.array([0, 1, 3, 4, 5, 6])
    options = {"label_smoothing": 0.1}
    if hostile == "offset":
        x = x + np.float32(1e4)
    elif hostile.startswith("masked-class"):
        x[:, 2] = -np.inf
        if hostile == "masked-class":
            options = {}
        else:  # and a class weight, 0 at the masked class
            options = {"weight": np.array([1.0, 2.0, 0.0, 1.0, 0.5, 1.0, 1.0], np.float32)}
    else:
        options.update(weight=rng.uniform(0.5, 2.0, 7).astype(np.float32), ignore_index=4)
    if hostile.startswith("masked-class"):  # the reference without the masked class, whose p is 0
        kept = [c for c in range(7) if c != 2]
        reduced = {k: v[kept] if k == "weight" else v for k, v in options.items()}
        ref_loss, g = reference_cross_entropy(x[:, kept], np.where(y > 2, y - 1, y), **reduced)
        ref_grad = np.insert(g, 2, 0.0, axis=1)
    else:
        ref_loss, ref_grad = reference_cross_entropy(x, y, **options)
    given = {k: tf.constant(v) if isinstance(v, np.ndarray) else v for k, v in options.items()}
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        loss = smoothloss.cross_entropy(xt, tf.constant(y), **given)
    g = tape.gradient(loss, xt).numpy()
    assert np.isfinite(loss.numpy())
    assert rel_err(loss.numpy(), ref_loss) <= 1e-5
    assert np.all(np.isfinite(g)) and rel_err(g, ref_grad) <= 1e-5
