"""smoothloss.keras against Keras's own losses, side by side, on Keras's backend.

In-process tests run on the backend Keras picked at import (``KERAS_BACKEND`` or
``~/.keras/keras.json``); the gradient helper handles tensorflow, jax and torch. The
training tests start one subprocess per Keras backend, since Keras fixes its backend
at import time. Tolerances are float32's (SPEC: 1e-5 relative).
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from smoothloss.keras import CategoricalCrossentropy, SparseCategoricalCrossentropy  # noqa: E402
from smoothloss.testing import reference_cross_entropy, rel_err  # noqa: E402

ops = keras.ops
BACKEND = keras.backend.backend()
TOL = 1e-5
K = 5
IGNORE = -1
REDUCTIONS = ["sum_over_batch_size", "sum", "mean", "mean_with_sample_weight", "none", None]
# layout -> (y_pred shape, class axis); the per-example loss has the shape without the axis
LAYOUTS = {"2d": ((6, K), -1), "3d-last": ((3, 4, K), -1), "3d-axis1": ((3, K, 4), 1)}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------- helpers
def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _data(layout: str, *, from_logits: bool, ignore: bool = False, seed: int = 0):
    """(y_pred, soft targets, integer labels, per-position sample weights, axis)."""
    shape, axis = LAYOUTS[layout]
    rng = np.random.default_rng(seed)
    logits = (2.0 * rng.normal(size=shape)).astype(np.float32)
    y_pred = logits if from_logits else _softmax(logits, axis).astype(np.float32)
    positions = tuple(s for i, s in enumerate(shape) if i != axis % len(shape))
    soft = np.moveaxis(rng.dirichlet(np.ones(K), size=positions), -1, axis).astype(np.float32)
    labels = rng.integers(0, K, size=positions)
    if ignore:
        labels.flat[::3] = IGNORE
    sample_weight = rng.uniform(0.2, 2.0, size=positions).astype(np.float32)
    return y_pred, soft, labels, sample_weight, axis


def _value_and_grad(f, x: np.ndarray):
    """``f(x)`` and the gradient of ``sum(f(x))`` with respect to ``x``, as NumPy, on Keras's backend."""
    if BACKEND == "tensorflow":
        import tensorflow as tf

        xt = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            out = f(xt)
            total = tf.reduce_sum(out)
        return out.numpy(), tape.gradient(total, xt).numpy()
    if BACKEND == "jax":
        import jax
        import jax.numpy as jnp

        out, vjp = jax.vjp(f, jnp.asarray(x))
        (g,) = vjp(jnp.ones_like(out))
        return np.asarray(out), np.asarray(g)
    if BACKEND == "torch":
        xt = ops.convert_to_tensor(x).requires_grad_(True)
        out = f(xt)
        out.sum().backward()
        return out.detach().cpu().numpy(), xt.grad.cpu().numpy()
    pytest.skip(f"no gradient helper for the Keras backend {BACKEND!r}")


def _assert_same(ours, theirs, *, tol: float = TOL) -> None:
    (v1, g1), (v2, g2) = ours, theirs
    assert np.all(np.isfinite(v1)) and np.all(np.isfinite(g1))
    assert rel_err(v1, v2) <= tol, (v1, v2)
    assert rel_err(g1, g2) <= tol, np.max(np.abs(g1 - g2))


# ----------------------------------------------------------------------------- values and gradients
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "sample_weight"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("from_logits", [True, False], ids=["logits", "probs"])
def test_categorical_matches_keras(from_logits, label_smoothing, layout, weighted, reduction):
    y_pred, soft, _, sw, axis = _data(layout, from_logits=from_logits)
    sw = sw if weighted else None
    kwargs = dict(from_logits=from_logits, label_smoothing=label_smoothing, axis=axis, reduction=reduction)
    ours = CategoricalCrossentropy(**kwargs)
    ref_targets = soft
    if axis != -1 and label_smoothing:  # Keras smooths with the wrong K there (test below)
        ref_targets = soft * (1 - label_smoothing) + label_smoothing / K
        kwargs["label_smoothing"] = 0.0
    theirs = keras.losses.CategoricalCrossentropy(**kwargs)
    _assert_same(
        _value_and_grad(lambda x: ours(soft, x, sample_weight=sw), y_pred),
        _value_and_grad(lambda x: theirs(ref_targets, x, sample_weight=sw), y_pred),
    )


@pytest.mark.xfail(
    strict=True,
    reason="Keras 3.15.1 categorical_crossentropy smooths with K = y_true.shape[-1], not "
    "y_true.shape[axis]: with axis=1 its smoothed target does not sum to 1",
)
def test_keras_smoothing_with_axis_1():
    y_pred, soft, _, _, axis = _data("3d-axis1", from_logits=True)
    kwargs = dict(from_logits=True, label_smoothing=0.1, axis=axis)
    ours = CategoricalCrossentropy(**kwargs)(soft, y_pred)
    theirs = keras.losses.CategoricalCrossentropy(**kwargs)(soft, y_pred)
    assert rel_err(ops.convert_to_numpy(ours), ops.convert_to_numpy(theirs)) <= TOL


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "sample_weight"])
@pytest.mark.parametrize("layout", ["2d", "3d-last"])  # Keras's sparse loss takes axis=-1 only
@pytest.mark.parametrize("ignore_class", [None, IGNORE], ids=["all", "ignore_class"])
@pytest.mark.parametrize("from_logits", [True, False], ids=["logits", "probs"])
def test_sparse_matches_keras(from_logits, ignore_class, layout, weighted, reduction):
    y_pred, _, labels, sw, axis = _data(layout, from_logits=from_logits, ignore=ignore_class is not None)
    sw = sw if weighted else None
    kwargs = dict(from_logits=from_logits, ignore_class=ignore_class, axis=axis, reduction=reduction)
    ours, theirs = SparseCategoricalCrossentropy(**kwargs), keras.losses.SparseCategoricalCrossentropy(**kwargs)
    _assert_same(
        _value_and_grad(lambda x: ours(labels, x, sample_weight=sw), y_pred),
        _value_and_grad(lambda x: theirs(labels, x, sample_weight=sw), y_pred),
    )


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "sample_weight"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("ignore_class", [None, IGNORE], ids=["all", "ignore_class"])
@pytest.mark.parametrize("from_logits", [True, False], ids=["logits", "probs"])
def test_smoothed_sparse_matches_keras_categorical_on_one_hot(from_logits, ignore_class, layout, weighted, reduction):
    """Keras 3.15's sparse loss has no label_smoothing: the reference is Keras's categorical
    loss on the one-hot labels of the valid entries (the mask's reweighting makes
    "sum_over_batch_size" a mean over exactly those entries)."""
    eps = 0.1
    y_pred, _, labels, sw, axis = _data(layout, from_logits=from_logits, ignore=ignore_class is not None)
    sw = sw if weighted else None
    ours = SparseCategoricalCrossentropy(
        from_logits=from_logits, ignore_class=ignore_class, axis=axis, reduction=reduction, label_smoothing=eps
    )
    flat = labels.reshape(-1)
    valid = flat != IGNORE
    rows_kept = np.flatnonzero(valid)
    eye = np.eye(K, dtype=np.float32)

    def reference(x):
        rows = ops.reshape(ops.moveaxis(x, axis, -1), (-1, K))
        if reduction in (None, "none"):
            per = keras.losses.CategoricalCrossentropy(from_logits=from_logits, label_smoothing=eps, reduction=None)(
                eye[np.where(valid, flat, 0)], rows
            )
            w = valid.astype(np.float32) * (1.0 if sw is None else sw.reshape(-1))
            return ops.reshape(ops.multiply(per, ops.convert_to_tensor(w)), labels.shape)
        cce = keras.losses.CategoricalCrossentropy(from_logits=from_logits, label_smoothing=eps, reduction=reduction)
        kept_weight = None if sw is None else sw.reshape(-1)[rows_kept]
        return cce(eye[flat[rows_kept]], ops.take(rows, rows_kept, axis=0), sample_weight=kept_weight)

    _assert_same(
        _value_and_grad(lambda x: ours(labels, x, sample_weight=sw), y_pred),
        _value_and_grad(reference, y_pred),
    )


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("from_logits", [True, False], ids=["logits", "probs"])
def test_all_ignored_is_zero(from_logits, reduction):
    y_pred, _, labels, sw, _ = _data("2d", from_logits=from_logits)
    labels[:] = IGNORE
    ours = SparseCategoricalCrossentropy(
        from_logits=from_logits, ignore_class=IGNORE, reduction=reduction, label_smoothing=0.1
    )
    value, grad = _value_and_grad(lambda x: ours(labels, x, sample_weight=sw), y_pred)
    assert np.all(value == 0.0) and np.all(grad == 0.0)
    theirs = keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits, ignore_class=IGNORE, reduction=reduction)
    np.testing.assert_array_equal(value, ops.convert_to_numpy(theirs(labels, y_pred, sample_weight=sw)))


def test_labels_with_a_trailing_unit_axis():
    y_pred, _, labels, _, _ = _data("2d", from_logits=True)
    loss = SparseCategoricalCrossentropy(from_logits=True, label_smoothing=0.1)
    a = ops.convert_to_numpy(loss(labels, y_pred))
    b = ops.convert_to_numpy(loss(labels[:, None], y_pred))
    assert a == b


def test_saturated_probabilities_differ_by_at_most_k_epsilon():
    """The one documented divergence: where clipping is active, ours log-softmaxes the
    clipped log-probabilities, which moves the loss by at most about K·epsilon."""
    y_pred = np.eye(K, dtype=np.float32)[[0, 1, 2]]
    y_pred[2] = [0.5, 0.5, 0.0, 0.0, 0.0]
    labels = np.array([0, 2, 1])
    bound = 2 * K * keras.backend.epsilon()
    for ours, theirs, y_true in [
        (CategoricalCrossentropy(reduction=None), keras.losses.CategoricalCrossentropy(reduction=None), np.eye(K)[labels]),
        (SparseCategoricalCrossentropy(reduction=None), keras.losses.SparseCategoricalCrossentropy(reduction=None), labels),
    ]:
        a = ops.convert_to_numpy(ours(y_true, y_pred))
        b = ops.convert_to_numpy(theirs(y_true, y_pred))
        assert np.all(np.abs(a - b) <= bound), (a, b)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="Keras follows a softmax back to its logits on TensorFlow only")
@pytest.mark.parametrize("traced", [False, True], ids=["eager-keras-softmax", "tf-function-tf-softmax"])
def test_softmax_output_uses_its_logits_like_keras(traced):
    import tensorflow as tf

    x = np.array([[40.0, 0.0, 0.0, -3.0, 1.0], [0.5, -1.0, 2.0, 0.0, 0.0]], dtype=np.float32)
    labels = np.array([1, 2])
    softmax = tf.nn.softmax if traced else keras.activations.softmax
    for ours, theirs, y_true in [
        (CategoricalCrossentropy(reduction=None), keras.losses.CategoricalCrossentropy(reduction=None), np.eye(K)[labels]),
        (SparseCategoricalCrossentropy(reduction=None), keras.losses.SparseCategoricalCrossentropy(reduction=None), labels),
    ]:
        def fn(loss):
            f = lambda z: loss(y_true, softmax(z))  # noqa: E731
            return tf.function(f) if traced else f

        got = _value_and_grad(fn(ours), x)
        _assert_same(got, _value_and_grad(fn(theirs), x))
        expected = reference_cross_entropy(x, labels, reduction="none")[0]  # exact, unclipped
        assert rel_err(got[0], expected) <= TOL  # 40.0..., where clipping would give 16.1


@pytest.mark.parametrize("sparse", [False, True], ids=["categorical", "sparse"])
def test_smoothloss_options_are_forwarded(sparse):
    opts = dict(label_smoothing=0.2, convention="others", z_loss=1e-3, softcap=5.0)
    y_pred, soft, labels, _, axis = _data("3d-axis1", from_logits=True, ignore=sparse)
    if sparse:
        loss = SparseCategoricalCrossentropy(from_logits=True, ignore_class=IGNORE, axis=axis, **opts)
        ref = reference_cross_entropy(y_pred, labels, axis=axis, ignore_index=IGNORE, **opts)
        y_true = labels
    else:
        loss = CategoricalCrossentropy(from_logits=True, axis=axis, **opts)
        ref = reference_cross_entropy(y_pred, soft, axis=axis, **opts)
        y_true = soft
    _assert_same(_value_and_grad(lambda x: loss(y_true, x), y_pred), ref)


def test_mixed_precision_policy_matches_keras():
    y_pred, soft, _, _, _ = _data("2d", from_logits=True)
    ours = CategoricalCrossentropy(from_logits=True, label_smoothing=0.1, dtype="mixed_float16")
    theirs = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1, dtype="mixed_float16")
    a, b = ours(soft, y_pred), theirs(soft, y_pred)
    assert keras.backend.standardize_dtype(a.dtype) == keras.backend.standardize_dtype(b.dtype) == "float16"
    assert rel_err(ops.convert_to_numpy(a), ops.convert_to_numpy(b)) <= 1e-3


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "cls, kwargs, error",
    [
        (CategoricalCrossentropy, {"label_smoothing": 1.5}, ValueError),
        (CategoricalCrossentropy, {"label_smoothing": None}, TypeError),
        (CategoricalCrossentropy, {"convention": "fairseq"}, ValueError),
        (CategoricalCrossentropy, {"z_loss": 1e-4}, ValueError),  # needs from_logits=True
        (CategoricalCrossentropy, {"from_logits": True, "softcap": -1.0}, ValueError),
        (CategoricalCrossentropy, {"axis": True}, TypeError),
        (CategoricalCrossentropy, {"reduction": "mean_over_batch"}, ValueError),
        (SparseCategoricalCrossentropy, {"ignore_class": 1.5}, TypeError),
        (SparseCategoricalCrossentropy, {"from_logits": "yes"}, TypeError),
    ],
)
def test_bad_arguments_fail_at_construction(cls, kwargs, error):
    with pytest.raises(error):
        cls(**kwargs)


def test_out_of_range_label_is_named():
    loss = SparseCategoricalCrossentropy(from_logits=True, ignore_class=IGNORE)
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        loss(np.array([0, 7]), np.zeros((2, K), np.float32))


# ----------------------------------------------------------------------------- serialization
LOSSES = [
    CategoricalCrossentropy(from_logits=True, label_smoothing=0.1, axis=1, reduction="sum", name="cce", z_loss=1e-4),
    SparseCategoricalCrossentropy(
        True, 255, "mean_with_sample_weight", 1, "scce", "float32", label_smoothing=0.2, convention="others", softcap=30.0
    ),
    SparseCategoricalCrossentropy(reduction=None, dtype=keras.dtype_policies.DTypePolicy("mixed_bfloat16")),
]


@pytest.mark.parametrize("loss", LOSSES, ids=lambda loss: f"{type(loss).__name__}-{loss.name}-{loss.reduction}")
def test_config_round_trip(loss):
    config = loss.get_config()
    params = set(inspect.signature(type(loss).__init__).parameters) - {"self"}
    assert set(config) == params  # every constructor argument, nothing else
    assert type(loss).from_config(config).get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert type(restored) is type(loss) and restored.get_config() == config
    assert restored.dtype == loss.dtype


def _tiny_model(loss):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(K)])
    model.compile(optimizer="sgd", loss=loss)
    return model


def test_model_save_and_load(tmp_path):
    """model.save -> load_model with no custom_objects, here and in a fresh process that
    imports only keras and smoothloss.keras (without that import Keras cannot find the class)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 4)).astype(np.float32)
    y = rng.integers(0, K, size=8)
    y[::4] = IGNORE
    loss = SparseCategoricalCrossentropy(from_logits=True, ignore_class=IGNORE, label_smoothing=0.1, z_loss=1e-3)
    model = _tiny_model(loss)
    expected = model.evaluate(x, y, verbose=0)
    path = tmp_path / "m.keras"
    model.save(path)
    restored = keras.models.load_model(path)
    assert type(restored.loss) is SparseCategoricalCrossentropy
    assert restored.loss.get_config() == loss.get_config()
    assert rel_err(restored.evaluate(x, y, verbose=0), expected) <= TOL

    np.savez(tmp_path / "xy.npz", x=x, y=y)
    code = textwrap.dedent(
        f"""
        import numpy as np, keras
        try:
            keras.models.load_model({str(path)!r})
        except TypeError as e:
            assert "SparseCategoricalCrossentropy" in str(e), e
        else:
            raise AssertionError("loaded without smoothloss.keras imported")
        import smoothloss.keras
        m = keras.models.load_model({str(path)!r})
        assert type(m.loss) is smoothloss.keras.SparseCategoricalCrossentropy, type(m.loss)
        d = np.load({str(tmp_path / "xy.npz")!r})
        print(repr(m.evaluate(d["x"], d["y"], verbose=0)))
        """
    )
    out = _run(code, BACKEND)
    assert rel_err(float(out.strip().splitlines()[-1]), expected) <= TOL


# ----------------------------------------------------------------------------- training, per backend
def _run(code: str, backend: str, timeout: float = 120) -> str:
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


TRAIN = """
import os, tempfile
import numpy as np
import keras
from smoothloss.keras import CategoricalCrossentropy, SparseCategoricalCrossentropy

assert keras.backend.backend() == os.environ["KERAS_BACKEND"], keras.backend.backend()
K, N, EPS = 4, 64, 0.1
rng = np.random.default_rng(0)
x = rng.normal(size=(N, 8)).astype("float32")
y = np.argmax(x[:, :K] + 0.3 * rng.normal(size=(N, K)), axis=1)
y[::8] = -1                                     # ignored entries
valid = y != -1
onehot = np.eye(K, dtype="float32")[np.where(valid, y, 0)]
# Keras's categorical loss on one-hot labels, with the mask's weights total/valid
mask_weight = valid.astype("float32") * (N / valid.sum())

def twin(activation, loss, jit_compile="auto"):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(K, activation=activation)])
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss=loss, jit_compile=jit_compile)
    return model

# "auto" means jax.jit on JAX, eager on torch and no XLA on a CPU-only TensorFlow: ask
# TensorFlow for XLA in the first case (the second runs as a plain tf.function).
XLA = True if keras.backend.backend() == "tensorflow" else "auto"

def close(a, b, tol=1e-5):
    a, b = np.asarray(a, "float64"), np.asarray(b, "float64")
    assert np.max(np.abs(a - b)) <= tol * np.max(np.abs(b)), (a, b)

def train(model, *data, **kw):
    return model.fit(*data, batch_size=N, epochs=6, shuffle=False, verbose=0, **kw).history["loss"]

cases = [  # (ours, Keras reference, ours' data, reference's data and sample_weight)
    (twin(None, SparseCategoricalCrossentropy(from_logits=True, ignore_class=-1, label_smoothing=EPS), XLA),
     twin(None, keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=EPS), XLA),
     (x, y), (x, onehot), {"sample_weight": mask_weight}),
    (twin("softmax", CategoricalCrossentropy(label_smoothing=EPS)),
     twin("softmax", keras.losses.CategoricalCrossentropy(label_smoothing=EPS)),
     (x, onehot), (x, onehot), {}),
]
for ours, ref, data, ref_data, ref_kw in cases:
    # step 0: the same loss through model.evaluate and through a direct call
    start = ours.evaluate(*data, batch_size=N, verbose=0)
    close(start, ref.evaluate(*ref_data, batch_size=N, verbose=0, **ref_kw))
    close(ours.loss(data[1], ours.predict(x, verbose=0)), start)
    hist, ref_hist = train(ours, *data), train(ref, *ref_data, **ref_kw)
    close(hist, ref_hist, 1e-4)                  # the same training trajectory
    assert hist[-1] < 0.9 * hist[0], hist
    path = os.path.join(tempfile.mkdtemp(), "m.keras")
    ours.save(path)
    restored = keras.models.load_model(path)
    assert type(restored.loss) is type(ours.loss)
    assert restored.loss.get_config() == ours.loss.get_config()
    close(restored.evaluate(*data, batch_size=N, verbose=0), ours.evaluate(*data, batch_size=N, verbose=0))
print("OK")
"""


@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_training_on_every_keras_backend(backend):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed")
    assert _run(TRAIN, backend).strip().endswith("OK")


def test_public_api():
    import smoothloss.keras as sk

    assert sk.__all__ == [
        "BinaryCrossentropy", "CategoricalCrossentropy", "LinearCrossEntropyHead", "SparseCategoricalCrossentropy",
        "binary_crossentropy", "categorical_crossentropy", "sparse_categorical_crossentropy",
    ]
    assert keras.saving.get_registered_name(CategoricalCrossentropy) == "smoothloss>CategoricalCrossentropy"
    assert issubclass(SparseCategoricalCrossentropy, keras.losses.Loss)


# ============================================================================= issue 4: BinaryCrossentropy
from smoothloss.keras import BinaryCrossentropy  # noqa: E402

# layout -> (y_pred shape, axis the element-wise losses are averaged over)
BCE_LAYOUTS = {"2d": ((6, K), -1), "3d-axis1": ((3, K, 4), 1)}


def _bce_data(layout: str, *, from_logits: bool, seed: int = 0):
    """(y_pred, targets half hard 0/1 and half soft, sample weights per example, axis)."""
    shape, axis = BCE_LAYOUTS[layout]
    rng = np.random.default_rng(seed)
    logits = (2.5 * rng.normal(size=shape)).astype(np.float32)
    y_pred = logits if from_logits else (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
    y_true = rng.random(shape).astype(np.float32)
    y_true.flat[::2] = np.round(y_true.flat[::2])
    positions = tuple(s for i, s in enumerate(shape) if i != axis % len(shape))
    sample_weight = rng.uniform(0.2, 2.0, size=positions).astype(np.float32)
    return y_pred, y_true, sample_weight, axis


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "sample_weight"])
@pytest.mark.parametrize("layout", list(BCE_LAYOUTS))
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("from_logits", [True, False], ids=["logits", "probs"])
def test_binary_matches_keras(from_logits, label_smoothing, layout, weighted, reduction):
    y_pred, y_true, sw, axis = _bce_data(layout, from_logits=from_logits)
    sw = sw if weighted else None
    kwargs = dict(from_logits=from_logits, label_smoothing=label_smoothing, axis=axis, reduction=reduction)
    ours, theirs = BinaryCrossentropy(**kwargs), keras.losses.BinaryCrossentropy(**kwargs)
    _assert_same(
        _value_and_grad(lambda x: ours(y_true, x, sample_weight=sw), y_pred),
        _value_and_grad(lambda x: theirs(y_true, x, sample_weight=sw), y_pred),
    )


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_binary_saturated_probabilities_are_clipped_like_keras(label_smoothing):
    y_pred = np.array([[0.0, 1.0, 1e-9, 1 - 1e-8, 0.5], [1.0, 0.0, 0.3, 1e-7, 1.0]], np.float32)
    y_true = np.array([[1.0, 0.0, 1.0, 0.0, 1.0], [1.0, 0.0, 0.0, 1.0, 0.25]], np.float32)
    ours = BinaryCrossentropy(label_smoothing=label_smoothing, reduction=None)(y_true, y_pred)
    theirs = keras.losses.BinaryCrossentropy(label_smoothing=label_smoothing, reduction=None)(y_true, y_pred)
    assert rel_err(ops.convert_to_numpy(ours), ops.convert_to_numpy(theirs)) <= TOL


def test_binary_large_logits_are_finite_and_exact():
    x = np.array([[80.0, -80.0, 0.0, 30.0]], np.float32)
    t = np.array([[0.0, 1.0, 1.0, 1.0]], np.float32)
    got = ops.convert_to_numpy(BinaryCrossentropy(from_logits=True, reduction=None)(t, x))
    np.testing.assert_allclose(got, [(80.0 + 80.0 + np.log(2.0) + np.log1p(np.exp(-30.0))) / 4], rtol=TOL)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="Keras follows a sigmoid back to its logits on TensorFlow only")
@pytest.mark.parametrize("traced", [False, True], ids=["eager-keras-sigmoid", "tf-function-tf-sigmoid"])
def test_binary_sigmoid_output_uses_its_logits_like_keras(traced):
    import tensorflow as tf

    x = np.array([[40.0, -30.0, 0.0, -3.0, 1.0], [0.5, -1.0, 2.0, 0.0, 25.0]], dtype=np.float32)
    y_true = np.array([[0.0, 1.0, 1.0, 0.0, 1.0], [1.0, 0.0, 0.5, 1.0, 0.0]], np.float32)
    sigmoid = tf.nn.sigmoid if traced else keras.activations.sigmoid
    ours, theirs = BinaryCrossentropy(reduction=None), keras.losses.BinaryCrossentropy(reduction=None)

    def fn(loss):
        f = lambda z: loss(y_true, sigmoid(z))  # noqa: E731
        return tf.function(f) if traced else f

    got = _value_and_grad(fn(ours), x)
    _assert_same(got, _value_and_grad(fn(theirs), x))
    exact = np.mean(np.maximum(x, 0) - x * y_true + np.log1p(np.exp(-np.abs(x))), axis=-1)
    assert rel_err(got[0], exact) <= TOL  # 40 and 30 exactly, where clipping would give 16.1


def test_binary_mixed_precision_policy_matches_keras():
    y_pred, y_true, _, _ = _bce_data("2d", from_logits=False)
    for from_logits in (False, True):
        kwargs = dict(from_logits=from_logits, label_smoothing=0.1, dtype="mixed_float16")
        x = y_pred if not from_logits else np.log(y_pred / (1 - y_pred))
        a = BinaryCrossentropy(**kwargs)(y_true, x)
        b = keras.losses.BinaryCrossentropy(**kwargs)(y_true, x)
        assert keras.backend.standardize_dtype(a.dtype) == keras.backend.standardize_dtype(b.dtype) == "float16"
        assert rel_err(ops.convert_to_numpy(a), ops.convert_to_numpy(b)) <= 1e-3


def test_binary_float16_saturated_probabilities_stay_finite():
    """The documented divergence: 16-bit probabilities become logits in float32, so a
    saturated float16 probability (1 - 1e-7 rounds to 1 there) gives a finite loss where
    Keras's float16 log(1 - p) is -inf (Keras 3.15: NaN)."""
    y_true = np.array([[1.0, 0.0, 1.0]], np.float32)
    y_pred = np.array([[1.0, 0.0, 0.9995]], np.float16)
    got = ops.convert_to_numpy(BinaryCrossentropy(reduction=None, dtype="mixed_float16")(y_true, y_pred))
    expected = ops.convert_to_numpy(BinaryCrossentropy(reduction=None)(y_true, y_pred.astype(np.float32)))
    assert np.all(np.isfinite(got)) and rel_err(got, expected) <= 1e-2


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"label_smoothing": 1.5}, ValueError),
        ({"label_smoothing": None}, TypeError),
        ({"from_logits": 1}, TypeError),
        ({"axis": 1.0}, TypeError),
        ({"reduction": "mean_over_batch"}, ValueError),
    ],
)
def test_binary_bad_arguments_fail_at_construction(kwargs, error):
    with pytest.raises(error):
        BinaryCrossentropy(**kwargs)


@pytest.mark.parametrize(
    "loss",
    [
        BinaryCrossentropy(),
        BinaryCrossentropy(True, 0.1, 1, "sum", "bce", "float32"),
        BinaryCrossentropy(label_smoothing=0.2, reduction=None, dtype=keras.dtype_policies.DTypePolicy("mixed_bfloat16")),
    ],
    ids=["default", "positional", "policy"],
)
def test_binary_config_round_trip(loss):
    config = loss.get_config()
    params = set(inspect.signature(BinaryCrossentropy.__init__).parameters) - {"self"}
    assert set(config) == params  # every constructor argument, nothing else
    # Keras's own keys, plus dtype (Keras 3.15's BinaryCrossentropy.get_config drops it)
    assert set(config) == set(keras.losses.BinaryCrossentropy().get_config()) | {"dtype"}
    assert BinaryCrossentropy.from_config(config).get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert type(restored) is BinaryCrossentropy and restored.get_config() == config
    assert restored.dtype == loss.dtype
    assert keras.saving.get_registered_name(BinaryCrossentropy) == "smoothloss>BinaryCrossentropy"


def test_binary_model_save_and_load(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 4)).astype(np.float32)
    y = (rng.random((8, K)) < 0.3).astype(np.float32)
    loss = BinaryCrossentropy(from_logits=True, label_smoothing=0.1)
    model = _tiny_model(loss)
    expected = model.evaluate(x, y, verbose=0)
    path = tmp_path / "bce.keras"
    model.save(path)
    restored = keras.models.load_model(path)
    assert type(restored.loss) is BinaryCrossentropy and restored.loss.get_config() == loss.get_config()
    assert rel_err(restored.evaluate(x, y, verbose=0), expected) <= TOL


BCE_ON_BACKEND = """
import os
import numpy as np
import keras
from smoothloss.keras import BinaryCrossentropy

assert keras.backend.backend() == os.environ["KERAS_BACKEND"], keras.backend.backend()
rng = np.random.default_rng(0)
x = rng.normal(size=(32, 8)).astype("float32")
y = (x[:, :4] + 0.3 * rng.normal(size=(32, 4)) > 0).astype("float32")
sw = rng.uniform(0.5, 2.0, size=32).astype("float32")
logits = (2.5 * rng.normal(size=(6, 4))).astype("float32")
probs = 1 / (1 + np.exp(-logits))

def close(a, b, tol=1e-5):
    a, b = np.asarray(a, "float64"), np.asarray(b, "float64")
    assert np.max(np.abs(a - b)) <= tol * np.max(np.abs(b)), (a, b)

for from_logits, pred in ((True, logits), (False, probs)):
    for eps in (0.0, 0.1):
        for reduction in ("sum_over_batch_size", "sum", None):
            kw = dict(from_logits=from_logits, label_smoothing=eps, reduction=reduction)
            close(BinaryCrossentropy(**kw)(y[:6], pred, sample_weight=sw[:6]),
                  keras.losses.BinaryCrossentropy(**kw)(y[:6], pred, sample_weight=sw[:6]))

def train(loss, activation):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, activation=activation)])
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss=loss)
    return model.fit(x, y, sample_weight=sw, batch_size=32, epochs=5, shuffle=False, verbose=0).history["loss"]

hist = train(BinaryCrossentropy(label_smoothing=0.1), "sigmoid")  # probabilities, as Keras's default
close(hist, train(keras.losses.BinaryCrossentropy(label_smoothing=0.1), "sigmoid"), 1e-4)
assert hist[-1] < 0.95 * hist[0], hist
print("OK")
"""


@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_binary_on_every_keras_backend(backend):
    """Values against Keras's and the same fit() trajectory, on each Keras backend (the
    in-process tests above already cover Keras's current backend)."""
    if backend == BACKEND:
        pytest.skip(f"{backend} is Keras's backend in this process: covered by the tests above")
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed")
    assert _run(BCE_ON_BACKEND, backend).strip().endswith("OK")


# ============================================================================= the declared options
from smoothloss import _options  # noqa: E402
from smoothloss.keras import (  # noqa: E402
    binary_crossentropy,
    categorical_crossentropy,
    sparse_categorical_crossentropy,
)

# each class, its functional form, and the arguments it takes that are Keras's own (and
# not smoothloss options) besides from_logits and keras.losses.Loss's name/reduction/dtype
TAKERS = {
    BinaryCrossentropy: (binary_crossentropy, set()),
    CategoricalCrossentropy: (categorical_crossentropy, set()),
    SparseCategoricalCrossentropy: (sparse_categorical_crossentropy, {"ignore_class"}),
}


@pytest.mark.parametrize("cls", list(TAKERS), ids=lambda cls: cls.__name__)
def test_config_is_from_logits_the_declared_options_and_keras_keys(cls):
    """get_config's keys are from_logits, the smoothloss options the class takes (names
    of the declaration) and Keras's own; the constructor and the functional form take
    each of those options with the declaration's default, so the three cannot drift."""
    fn, keras_own = TAKERS[cls]
    taken = cls._OPTIONS
    assert set(taken) <= set(_options.NAMES) and len(set(taken)) == len(taken)
    loss_keys = set(keras.losses.Loss().get_config()) | {"dtype"}  # name, reduction; dtype
    assert set(cls().get_config()) == {"from_logits", *taken} | loss_keys | keras_own
    defaults = _options.defaults()
    for target in (cls.__init__, fn):
        params = inspect.signature(target).parameters
        # (reduction is Keras's own argument: Keras's reductions, another set of values)
        assert {name for name in params if name in _options.NAMES} - {"reduction"} == set(taken), target
        for name in taken:
            default = params[name].default
            assert default == defaults[name] and type(default) is type(defaults[name]), (target, name, default)
    assert defaults["axis"] == -1 and defaults["label_smoothing"] == 0.0 and defaults["convention"] == "uniform"
    assert defaults["z_loss"] == 0.0 and defaults["softcap"] is None


@pytest.mark.parametrize(
    "cls, kwargs, error, text",
    [
        (CategoricalCrossentropy, {"axis": True}, TypeError, "axis must be an int, got True"),
        (CategoricalCrossentropy, {"axis": np.int64(1)}, TypeError, f"axis must be an int, got {np.int64(1)!r}"),
        (BinaryCrossentropy, {"axis": 1.0}, TypeError, "axis must be an int, got 1.0"),
        (CategoricalCrossentropy, {"from_logits": "yes"}, TypeError, "from_logits must be True or False, got 'yes'"),
        (BinaryCrossentropy, {"label_smoothing": 1.5}, ValueError, "label_smoothing must lie in [0, 1], got 1.5"),
        (
            SparseCategoricalCrossentropy, {"label_smoothing": None}, TypeError,
            "label_smoothing must be a Python float in [0, 1], got NoneType",
        ),
        (
            CategoricalCrossentropy, {"convention": "fairseq"}, ValueError,
            "unknown convention 'fairseq'; expected one of ['uniform', 'others']",
        ),
        (
            CategoricalCrossentropy, {"z_loss": 1e-4}, ValueError,
            (
                "z_loss and softcap act on logits; pass logits to the loss and set "
                "from_logits=True (got from_logits=False, z_loss=0.0001, softcap=None)"
            ),
        ),
        (
            SparseCategoricalCrossentropy, {"from_logits": True, "softcap": -1.0}, ValueError,
            "softcap must be None or a finite number > 0, got -1.0",
        ),
        (SparseCategoricalCrossentropy, {"ignore_class": 1.5}, TypeError, "ignore_class must be None or an int, got 1.5"),
    ],
)
def test_bad_argument_messages(cls, kwargs, error, text):
    """The messages of the checks, Keras's (from_logits, axis, ignore_class) and the declared ones."""
    with pytest.raises(error) as info:
        cls(**kwargs)
    assert str(info.value) == text
