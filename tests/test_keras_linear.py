"""smoothloss.keras.LinearCrossEntropyHead on every Keras 3 backend.

Each ``check_*`` function tests one thing on the backend Keras runs. The backend Keras
picked at import (``KERAS_BACKEND`` or ``~/.keras/keras.json``) runs them in-process,
one test id each; every other installed backend runs them all in one subprocess (this
file run as a script with ``KERAS_BACKEND`` set), since Keras fixes its backend at
import. The reference is float64 NumPy written out below; tolerances are float32's.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import smoothloss  # noqa: E402
from smoothloss.keras import LinearCrossEntropyHead  # noqa: E402
from smoothloss.testing import rel_err  # noqa: E402

ops = keras.ops
BACKEND = keras.backend.backend()
BACKENDS = ("tensorflow", "jax", "torch")
TOL = 1e-5
H, V, IGNORE = 6, 7, -1
REPO = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------- helpers
def _data(shape: tuple[int, ...] = (3, 4), seed: int = 0):
    """(inputs (*shape, H), kernel (H, V), bias (V,), labels of ``shape``, every 5th ignored)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(*shape, H)).astype(np.float32)
    kernel = rng.normal(size=(H, V)).astype(np.float32)
    bias = rng.normal(size=V).astype(np.float32)
    labels = rng.integers(0, V, size=shape)
    labels.flat[::5] = IGNORE
    return x, kernel, bias, labels


def _reference(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray | None, labels: np.ndarray, eps: float):
    """(loss, d_kernel, d_bias, d_inputs) in float64.

    z = h @ K + b, q = (1-ε)·onehot(y) + ε/V, loss = mean over rows with y != IGNORE of
    -Σ_c q_c log softmax(z)_c; dL/dz = (softmax(z) - q)·valid / #valid.
    """
    h, y = x.reshape(-1, H).astype(np.float64), labels.reshape(-1)
    k = kernel.astype(np.float64)
    z = h @ k + (0.0 if bias is None else bias.astype(np.float64))
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    valid = y != IGNORE
    n_valid = valid.sum()
    q = (1.0 - eps) * np.eye(V)[np.where(valid, y, 0)] + eps / V
    loss = -(q * log_p).sum(axis=1)[valid].sum() / n_valid
    dz = (np.exp(log_p) - q) * valid[:, None] / n_valid
    return loss, h.T @ dz, dz.sum(axis=0), (dz @ k.T).reshape(x.shape)


def _head(kernel: np.ndarray, bias: np.ndarray | None, **kwargs) -> LinearCrossEntropyHead:
    head = LinearCrossEntropyHead(V, use_bias=bias is not None, **kwargs)
    head.build((None, H))
    head.set_weights([kernel] if bias is None else [kernel, bias])
    return head


def _loss_and_grads(head: LinearCrossEntropyHead, x: np.ndarray, labels: np.ndarray):
    """``head(x, labels)`` and its gradients for the trainable weights and ``x``, as NumPy."""
    if BACKEND == "tensorflow":
        import tensorflow as tf

        xt = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            loss = head(xt, labels)
        *d_weights, d_x = tape.gradient(loss, [*head.trainable_weights, xt])
    elif BACKEND == "jax":
        import jax

        def f(weights, xj):
            return head.stateless_call(weights, [], xj, labels)[0]

        weights = [w.value for w in head.trainable_weights]
        loss, (d_weights, d_x) = jax.value_and_grad(f, argnums=(0, 1))(weights, jax.numpy.asarray(x))
    elif BACKEND == "torch":
        xt = ops.convert_to_tensor(x).requires_grad_(True)
        loss = head(xt, labels)
        loss.backward()
        d_weights, d_x = [w.value.grad for w in head.trainable_weights], xt.grad
    else:
        raise NotImplementedError(f"no gradient helper for the Keras backend {BACKEND!r}")
    assert keras.backend.standardize_dtype(loss.dtype) == "float32"
    return ops.convert_to_numpy(loss), [ops.convert_to_numpy(g) for g in d_weights], ops.convert_to_numpy(d_x)


def _close(actual, expected, tol: float = TOL) -> None:
    assert rel_err(actual, expected) <= tol, (actual, expected)


# ----------------------------------------------------------------------------- checks, per backend
def check_loss_and_grads(tmp: Path, *, use_bias: bool = True) -> None:
    """Loss and gradients (kernel, bias, inputs) equal the float64 reference; 3-D inputs,
    uneven chunks, ignored rows, smoothing."""
    x, kernel, bias, labels = _data()
    bias = bias if use_bias else None
    head = _head(kernel, bias, label_smoothing=0.1, ignore_class=IGNORE, chunk_size=5)
    loss, d_weights, d_x = _loss_and_grads(head, x, labels)
    ref_loss, ref_dk, ref_db, ref_dx = _reference(x, kernel, bias, labels, 0.1)
    _close(loss, ref_loss)
    _close(d_weights[0], ref_dk)
    if use_bias:
        _close(d_weights[1], ref_db)
    _close(d_x, ref_dx)


def check_logits_and_options(tmp: Path) -> None:
    """Without labels the head gives ``x @ K + b``; with labels its loss is the core's
    cross-entropy of those logits with every option forwarded."""
    x, kernel, bias, labels = _data()
    opts = dict(label_smoothing=0.2, convention="others", z_loss=1e-3, softcap=3.0)
    head = _head(kernel, bias, ignore_class=IGNORE, chunk_size=5, **opts)
    logits = ops.convert_to_numpy(head(x))
    _close(logits, x.astype(np.float64) @ kernel + bias)
    np.testing.assert_array_equal(ops.convert_to_numpy(head.logits(x)), logits)
    expected = smoothloss.cross_entropy(logits.astype(np.float64), labels, ignore_index=IGNORE, **opts)
    _close(ops.convert_to_numpy(head(x, labels)), expected)


def check_fit_matches_dense(tmp: Path) -> None:
    """model.fit with the head (no compiled loss) follows the trajectory of Dense(V) with
    Keras's SparseCategoricalCrossentropy(from_logits=True) from the same weights."""
    rng = np.random.default_rng(1)
    n, d = 48, 8
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = np.argmax(x[:, :V] + 0.3 * rng.normal(size=(n, V)), axis=1)
    y[::6] = IGNORE

    def body():
        inputs = keras.Input((d,))
        return inputs, keras.layers.Dense(H, activation="tanh")(inputs)

    keras.utils.set_random_seed(0)
    inputs, hidden = body()
    head = LinearCrossEntropyHead(V, ignore_class=IGNORE, chunk_size=10)
    labels = keras.Input((), dtype="int32")
    ours = keras.Model([inputs, labels], head(hidden, labels))
    ref_inputs, ref_hidden = body()
    ref = keras.Model(ref_inputs, keras.layers.Dense(V)(ref_hidden))
    ours.set_weights(ref.get_weights())  # a Dense layer's weights load into the head
    ours.compile(optimizer=keras.optimizers.SGD(0.5))
    ref.compile(
        optimizer=keras.optimizers.SGD(0.5),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=IGNORE),
    )
    fit = dict(batch_size=16, epochs=5, shuffle=False, verbose=0)
    hist = ours.fit([x, y], **fit).history["loss"]
    ref_hist = ref.fit(x, y, **fit).history["loss"]
    assert np.max(np.abs(np.subtract(hist, ref_hist))) <= 1e-4, (hist, ref_hist)
    assert hist[-1] < 0.9 * hist[0], hist
    predictor = keras.Model(inputs, head(hidden))  # the trained head, logits out
    _close(predictor.predict(x, verbose=0), ref.predict(x, verbose=0), 1e-4)


def check_partial_last_batch(tmp: Path) -> None:
    """A last batch of another size (Keras may retrace with an unknown batch size)."""
    x, kernel, bias, labels = _data(shape=(20,))
    labels = np.abs(labels)  # no ignored rows: the batch-size-weighted mean is the mean
    head = _head(kernel, bias)
    inputs, y = keras.Input((H,)), keras.Input((), dtype="int32")
    model = keras.Model([inputs, y], head(inputs, y))
    model.compile(optimizer=keras.optimizers.SGD(0.0))
    assert np.isfinite(model.fit([x, labels], batch_size=8, epochs=1, verbose=0).history["loss"][0])
    _close(model.evaluate([x, labels], batch_size=8, verbose=0), ops.convert_to_numpy(head(x, labels)))


def check_serialization(tmp: Path) -> None:
    """get_config/from_config, serialize/deserialize, and model.save -> load_model."""
    head = LinearCrossEntropyHead(
        V, use_bias=False, kernel_initializer="he_normal", label_smoothing=0.1, ignore_class=255,
        z_loss=1e-4, softcap=30.0, chunk_size=64, convention="others", name="lm_head",
    )
    config = head.get_config()
    params = set(inspect.signature(LinearCrossEntropyHead.__init__).parameters) - {"self", "kwargs"}
    assert params <= set(config)
    assert LinearCrossEntropyHead.from_config(config).get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(head))
    assert type(restored) is LinearCrossEntropyHead and restored.get_config() == config

    x, _, _, labels = _data()
    inputs, y = keras.Input((4, H)), keras.Input((4,), dtype="int32")
    head = LinearCrossEntropyHead(V, label_smoothing=0.1, ignore_class=IGNORE, z_loss=1e-3, chunk_size=5)
    model = keras.Model([inputs, y], head(inputs, y))
    model.compile(optimizer="adam")
    model.fit([x, labels], epochs=1, batch_size=3, verbose=0)
    path = tmp / "head.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    loaded_head = loaded.layers[-1]
    assert type(loaded_head) is LinearCrossEntropyHead
    assert loaded_head.get_config() == head.get_config()
    for a, b in zip(loaded_head.get_weights(), head.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    _close(loaded.evaluate([x, labels], batch_size=3, verbose=0), model.evaluate([x, labels], batch_size=3, verbose=0))


def check_bad_labels(tmp: Path) -> None:
    """Labels outside [0, V), other than ignore_class, raise ValueError in eager calls."""
    x, kernel, bias, labels = _data()
    bad = labels.copy()
    bad[0, 1] = V
    with pytest.raises(ValueError, match=rf"\[0, {V}\)"):
        _head(kernel, bias, ignore_class=IGNORE)(x, bad)
    with pytest.raises(ValueError):
        _head(kernel, bias)(x, labels)  # IGNORE (-1) is out of range without ignore_class
    bad = labels.copy()
    bad[0, 1] = -2
    with pytest.raises(ValueError):
        _head(kernel, bias, ignore_class=IGNORE)(x, bad)


CHECKS: dict[str, Callable[[Path], None]] = {
    "loss_and_grads": check_loss_and_grads,
    "loss_and_grads-no_bias": lambda tmp: check_loss_and_grads(tmp, use_bias=False),
    "logits_and_options": check_logits_and_options,
    "fit_matches_dense": check_fit_matches_dense,
    "partial_last_batch": check_partial_last_batch,
    "serialization": check_serialization,
    "bad_labels": check_bad_labels,
}
# Known deviations, (backend, check) -> (the error, why); strict: such a check must fail so.
XFAIL: dict[tuple[str, str], tuple[type[Exception], str]] = {}


def _marks(name: str) -> list[pytest.MarkDecorator]:
    if (BACKEND, name) not in XFAIL:
        return []
    error, reason = XFAIL[BACKEND, name]
    return [pytest.mark.xfail(strict=True, raises=error, reason=reason)]


@pytest.mark.parametrize("name", [pytest.param(name, marks=_marks(name)) for name in CHECKS])
def test_on_keras_backend(name: str, tmp_path: Path) -> None:
    """Every check on the backend Keras picked at import."""
    CHECKS[name](tmp_path)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != BACKEND])
def test_on_other_keras_backend(backend: str) -> None:
    """Every check on another Keras backend, in one subprocess (see ``_main``)."""
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed")
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=path)
    proc = subprocess.run(
        [sys.executable, __file__], capture_output=True, text=True, env=env, cwd=REPO, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == f"OK {backend}", proc.stdout[-3000:]


# ----------------------------------------------------------------------------- backend-independent
@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"units": 1}, ValueError),
        ({"units": None}, TypeError),
        ({"label_smoothing": 1.5}, ValueError),
        ({"ignore_class": 1.5}, TypeError),
        ({"z_loss": -1.0}, ValueError),
        ({"softcap": 0.0}, ValueError),
        ({"chunk_size": 0}, ValueError),
        ({"convention": "fairseq"}, ValueError),
        ({"use_bias": "yes"}, TypeError),
        ({"filter_eps": "fast"}, ValueError),
        ({"filter_eps": -1.0}, ValueError),
        ({"filter_eps": 1e-6, "softcap": 5.0, "label_smoothing": 0.1}, NotImplementedError),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs, error):
    with pytest.raises(error):
        LinearCrossEntropyHead(**{"units": V, **kwargs})


def test_registered_and_public():
    import smoothloss.keras as sk
    import smoothloss.keras_linear as kl

    assert "LinearCrossEntropyHead" in sk.__all__
    assert sk.LinearCrossEntropyHead is kl.LinearCrossEntropyHead is LinearCrossEntropyHead
    assert keras.saving.get_registered_name(LinearCrossEntropyHead) == "smoothloss>LinearCrossEntropyHead"
    assert issubclass(LinearCrossEntropyHead, keras.layers.Layer)


def test_loads_a_config_saved_before_the_split():
    """Models saved when the class lived in smoothloss.keras name that module; Keras
    finds the class by its registered name, so they load unchanged."""
    head = LinearCrossEntropyHead(V, label_smoothing=0.1, ignore_class=IGNORE)
    saved = {**keras.saving.serialize_keras_object(head), "module": "smoothloss.keras"}
    restored = keras.saving.deserialize_keras_object(saved)
    assert type(restored) is LinearCrossEntropyHead and restored.get_config() == head.get_config()


def test_config_is_the_declared_options_and_keras_keys():
    """get_config's keys are the layer's own, Keras's Layer keys and the smoothloss
    options the head takes (names of the declaration), each with the declaration's
    default in the constructor."""
    from smoothloss import _options
    from smoothloss.keras_linear import _OPTIONS

    assert set(_OPTIONS) <= set(_options.NAMES)
    own = {"units", "use_bias", "kernel_initializer", "bias_initializer", "ignore_class", "chunk_size", "filter_eps"}
    head = LinearCrossEntropyHead(V)
    layer_keys = set(keras.layers.Layer.get_config(head))  # name, trainable, dtype
    assert set(head.get_config()) == own | layer_keys | set(_OPTIONS)
    params = inspect.signature(LinearCrossEntropyHead.__init__).parameters
    assert {name for name in params if name in _options.NAMES} == set(_OPTIONS)
    for name in _OPTIONS:
        default, expected = params[name].default, _options.defaults()[name]
        assert default == expected and type(default) is type(expected), (name, default)


def _main() -> None:
    """Run every check on ``keras.backend.backend()``; a check in XFAIL must fail."""
    tmp = Path(tempfile.mkdtemp())
    for name, check in CHECKS.items():
        error, reason = XFAIL.get((BACKEND, name), (None, None))
        (tmp / name).mkdir()
        try:
            check(tmp / name)
        except Exception as e:
            if error is None or not isinstance(e, error):
                raise
            print(f"xfail {name}: {reason}")
        else:
            if error is not None:
                raise AssertionError(f"{name} passes on {BACKEND} now; drop it from XFAIL")
    print(f"OK {BACKEND}")


if __name__ == "__main__":
    _main()
