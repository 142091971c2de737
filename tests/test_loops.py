"""Inside the frameworks' own loops: bad labels fail where the framework's own loss
fails (a TensorFlow graph and Keras ``fit``, ``torch.compile``), JAX reports them
through ``checkify`` when asked, and the varying options (label_smoothing, z_loss) may
be 0-d arrays, so that a schedule changes them without a new trace.

Every expected number comes from :func:`smoothloss.testing.reference_cross_entropy`
(float64, from the definition); each framework's tests skip when it is not installed.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import smoothloss
from smoothloss.testing import reference_cross_entropy

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RNG = np.random.default_rng(24)
X = RNG.normal(size=(6, 10)).astype(np.float32)
Y = np.array([0, 3, 9, 1, 5, 2])
EPS = (0.0, 0.05, 0.3, 1.0)


def ref(eps, labels=Y, **kw):
    loss, grad = reference_cross_entropy(X.astype(np.float64), labels, label_smoothing=float(eps), **kw)
    return loss, grad


# ----------------------------------------------------------------------------- torch.compile
@pytest.fixture(scope="module")
def inductor_step():
    """One Inductor graph (dynamic shapes) shared by the torch.compile cases."""
    torch = pytest.importorskip("torch")
    import smoothloss.torch as st

    def step(x, y):
        return st.cross_entropy(x, y, label_smoothing=0.1)

    return torch, torch.compile(step, fullgraph=True, dynamic=True)


def _old_inductor() -> bool:
    """A torch whose torch.compile has no ``recompile_limit`` (2.7 is one; 2.13 is not):
    its Inductor also decomposes ``torch._assert_async`` to nothing (a "TODO" in its
    decomposition.py), so no device-side check survives compiling."""
    import inspect

    torch = pytest.importorskip("torch")
    return "recompile_limit" not in inspect.signature(torch.compile).parameters


def test_torch_compile_raises_on_a_bad_label(inductor_step, request):
    torch, step = inductor_step
    if _old_inductor():
        request.applymarker(pytest.mark.xfail(
            strict=True, raises=pytest.fail.Exception,
            reason="this torch's Inductor drops device asserts: a bad label gives NaN under torch.compile "
            "(docs/errors.md, 'Older releases')",
        ))
    x = torch.tensor(X)
    good = Y.copy()
    good[1] = -100  # torch's default ignore_index: not an error
    expected, _ = reference_cross_entropy(X.astype(np.float64), np.where(good < 0, 0, good), label_smoothing=0.1,
                                          ignore_index=None, weight=None, reduction="none")
    want = expected[good >= 0].mean()
    assert abs(float(step(x, torch.tensor(good))) - want) < 1e-6
    bad = Y.copy()
    bad[2] = 99
    with pytest.raises(RuntimeError, match=r"labels must lie in \[0, 10\) or equal ignore_index=-100"):
        step(x, torch.tensor(bad))
    bad[2] = -3
    with pytest.raises(RuntimeError, match=r"labels must lie in \[0, 10\)"):
        step(x, torch.tensor(bad))


def test_torch_compile_takes_a_tensor_smoothing_without_recompiling():
    """A 0-d tensor ε inside torch.compile: one graph for every value (a Python float
    would be specialised into the graph)."""
    torch = pytest.importorskip("torch")
    graphs = []

    def counting(gm, example_inputs):  # a backend that counts Dynamo's graphs and runs them as traced
        graphs.append(gm)
        return gm.forward

    step = torch.compile(
        lambda x, y, e: smoothloss.cross_entropy(x, y, label_smoothing=e, z_loss=1e-3), backend=counting,
        fullgraph=True,
    )
    for eps in EPS:
        x = torch.tensor(X, requires_grad=True)
        e = torch.tensor(eps, dtype=torch.float32)
        loss = step(x, torch.tensor(Y), e)
        loss.backward()
        want, grad = ref(float(e), z_loss=1e-3)
        assert abs(float(loss.detach()) - want) < 2e-6
        np.testing.assert_allclose(x.grad.numpy(), grad, rtol=1e-5, atol=1e-7)
    assert len(graphs) == 1


def test_torch_tensor_options_are_checked_eagerly():
    torch = pytest.importorskip("torch")
    x, y = torch.tensor(X), torch.tensor(Y)
    with pytest.raises(ValueError, match=r"label_smoothing must lie in \[0, 1\], got 1.5"):
        smoothloss.cross_entropy(x, y, label_smoothing=torch.tensor(1.5))
    with pytest.raises(ValueError, match=r"z_loss must be a finite number >= 0"):
        smoothloss.cross_entropy(x, y, z_loss=torch.tensor(-1.0))
    with pytest.raises(TypeError, match="0-d floating array"):
        smoothloss.cross_entropy(x, y, label_smoothing=torch.tensor(1))
    with pytest.raises(TypeError, match="kl=True needs label_smoothing as a Python float"):
        smoothloss.cross_entropy(x, y, label_smoothing=torch.tensor(0.1), kl=True)
    # a tensor that requires grad: no gradient flows to it, the loss is the reference's
    e = torch.tensor(0.2, requires_grad=True)
    xg = torch.tensor(X, requires_grad=True)
    smoothloss.cross_entropy(xg, y, label_smoothing=e).backward()
    assert e.grad is None
    np.testing.assert_allclose(xg.grad.numpy(), ref(float(e.detach()))[1], rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- TensorFlow
def test_tf_function_raises_on_a_bad_label_with_its_values():
    tf = pytest.importorskip("tensorflow")
    f = tf.function(lambda x, y: smoothloss.cross_entropy(x, y, label_smoothing=0.1))
    bad = Y.copy()
    bad[0], bad[4] = 17, -3
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"labels must lie in \[0, 10\).*\[-3\] \[17\]"):
        f(tf.constant(X), tf.constant(bad))
    # XLA compiles graph assertions to nothing: there, as with Keras's own loss, NaN
    xla = tf.function(lambda x, y: smoothloss.cross_entropy(x, y, reduction="none"), jit_compile=True)
    out = xla(tf.constant(X), tf.constant(bad)).numpy()
    assert np.isnan(out[[0, 4]]).all() and np.isfinite(out[[1, 2, 3, 5]]).all()


def test_a_graph_traced_without_run_time_checks_has_none():
    """The bench's hook (smoothloss.bench.checks measures the check's cost with it): a
    graph traced inside it gives the NaN of an unchecked bad label, and the switch is on
    again after it."""
    tf = pytest.importorskip("tensorflow")
    from smoothloss.backends._base import without_run_time_checks

    bad = Y.copy()
    bad[5] = 10
    f = tf.function(lambda x, y: smoothloss.cross_entropy(x, y, reduction="none"))
    with without_run_time_checks():
        out = f.get_concrete_function(tf.constant(X), tf.constant(bad))(tf.constant(X), tf.constant(bad)).numpy()
    assert np.isnan(out[5]) and np.isfinite(out[:5]).all()
    with pytest.raises(tf.errors.InvalidArgumentError):
        tf.function(lambda x, y: smoothloss.cross_entropy(x, y))(tf.constant(X), tf.constant(bad))


def test_tf_variable_smoothing_in_tf_function_traces_once():
    tf = pytest.importorskip("tensorflow")
    eps = tf.Variable(0.0, dtype=tf.float64)
    traces = []

    @tf.function
    def step(x, y):
        traces.append(1)
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = smoothloss.cross_entropy(x, y, label_smoothing=eps, z_loss=1e-3)
        return loss, tape.gradient(loss, x)

    x = tf.constant(X.astype(np.float64))
    for value in EPS:
        eps.assign(value)
        loss, grad = step(x, tf.constant(Y))
        want, want_grad = ref(value, z_loss=1e-3)
        np.testing.assert_allclose(loss.numpy(), want, rtol=1e-12)
        np.testing.assert_allclose(grad.numpy(), want_grad, rtol=1e-10, atol=1e-14)
    assert len(traces) == 1
    eps.assign(1.5)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"label_smoothing must lie in \[0, 1\]"):
        step(x, tf.constant(Y))
    with pytest.raises(ValueError, match=r"label_smoothing must lie in \[0, 1\], got 1.5"):
        smoothloss.cross_entropy(x, tf.constant(Y), label_smoothing=eps)  # eagerly: read on the host


def test_tf_eager_schedule_with_a_variable_traces_the_xla_backward_once():
    tf = pytest.importorskip("tensorflow")
    from smoothloss.backends import tensorflow_compiled as tf_binding

    previous = smoothloss.set_compile_mode("always")
    try:
        compiled = tf_binding.XLA.kernels_by_name["backward"][0]
        before = compiled.experimental_get_tracing_count()
        eps = tf.Variable(0.0)
        x = tf.Variable(X)
        for step in range(6):
            eps.assign(0.05 * (step + 1))
            with tf.GradientTape() as tape:
                loss = smoothloss.cross_entropy(x, tf.constant(Y), label_smoothing=eps)
            g = tape.gradient(loss, x)
            want, want_grad = ref(float(eps.numpy()))
            np.testing.assert_allclose(loss.numpy(), want, rtol=2e-6)
            np.testing.assert_allclose(g.numpy(), want_grad, rtol=2e-5, atol=2e-7)
        assert compiled.experimental_get_tracing_count() - before <= 1
    finally:
        smoothloss.set_compile_mode(previous)


# ----------------------------------------------------------------------------- JAX
def test_jax_jit_takes_a_traced_smoothing_once():
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    import smoothloss.jax as sj

    traces = []

    def loss(x, e):
        traces.append(1)
        return smoothloss.cross_entropy(x, jnp.asarray(Y), label_smoothing=e, z_loss=1e-3)

    f = jax.jit(jax.value_and_grad(loss))
    optax_style = jax.jit(lambda x, e: sj.softmax_cross_entropy_with_integer_labels(x, jnp.asarray(Y), label_smoothing=e))
    dense = jax.jit(lambda x, e: sj.softmax_cross_entropy(x, jax.nn.one_hot(jnp.asarray(Y), 10), label_smoothing=e))
    for value in EPS:
        e = jnp.float32(value)
        got, grad = f(jnp.asarray(X), e)
        want, want_grad = ref(float(e), z_loss=1e-3)
        np.testing.assert_allclose(float(got), want, rtol=2e-6)
        np.testing.assert_allclose(np.asarray(grad), want_grad, rtol=2e-5, atol=2e-7)
        per_example = ref(float(e), reduction="none")[0]
        np.testing.assert_allclose(np.asarray(optax_style(jnp.asarray(X), e)), per_example, rtol=2e-6)
        np.testing.assert_allclose(np.asarray(dense(jnp.asarray(X), e)), per_example, rtol=2e-6)
    assert len(traces) == 1
    with pytest.raises(ValueError, match=r"label_smoothing must lie in \[0, 1\], got 1.5"):
        smoothloss.cross_entropy(jnp.asarray(X), jnp.asarray(Y), label_smoothing=jnp.float32(1.5))


def test_jax_reports_bad_labels_through_checkify_when_asked():
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    from jax.experimental import checkify

    import smoothloss.jax as sj

    bad = Y.copy()
    bad[3] = 12
    plain = jax.jit(lambda x, y: smoothloss.cross_entropy(x, y, reduction="none"))
    out = np.asarray(plain(jnp.asarray(X), jnp.asarray(bad)))
    assert np.isnan(out[3]) and np.isfinite(np.delete(out, 3)).all()  # the documented NaN, no error
    previous = sj.checkify_labels(True)
    try:
        step = jax.jit(checkify.checkify(lambda x, y, e: smoothloss.cross_entropy(x, y, label_smoothing=e)))
        err, _ = step(jnp.asarray(X), jnp.asarray(bad), jnp.float32(0.1))
        assert "labels must lie in [0, 10); found out-of-range values, e.g. 12 and 12" in err.get()
        err, value = step(jnp.asarray(X), jnp.asarray(Y), jnp.float32(0.1))
        assert err.get() is None
        np.testing.assert_allclose(float(value), ref(0.1)[0], rtol=2e-6)
        err, _ = step(jnp.asarray(X), jnp.asarray(Y), jnp.float32(2.0))
        assert "label_smoothing must lie in [0, 1]" in err.get()
    finally:
        sj.checkify_labels(previous)


# ----------------------------------------------------------------------------- Keras fit
FIT = r"""
import os, numpy as np, keras
import smoothloss.keras as slk
backend = keras.backend.backend()
assert backend == os.environ["KERAS_BACKEND"], backend
rng = np.random.default_rng(0)
x = rng.normal(size=(32, 5)).astype("float32")
y = rng.integers(0, 4, 32)
bad = y.copy(); bad[3] = 7

def fit(loss, labels, **kw):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(4)])
    model.compile(optimizer="sgd", loss=loss, **kw)
    try:
        return model, model.fit(x, labels, epochs=1, batch_size=32, verbose=0).history["loss"][0]
    except Exception as e:
        return model, type(e).__name__ + ": " + str(e)

# a bad label: smoothloss fails where Keras's own loss fails
jits = {"tensorflow": [False, "auto"], "torch": [False], "jax": [False]}[backend]
for jit in jits:
    _, own = fit(keras.losses.SparseCategoricalCrossentropy(from_logits=True), bad, jit_compile=jit)
    _, ours = fit(slk.SparseCategoricalCrossentropy(from_logits=True), bad, jit_compile=jit)
    if backend == "jax":  # eager Keras on JAX: smoothloss reads the labels and raises
        assert ours.startswith("ValueError: labels must lie in [0, 4)"), ours
    else:
        assert isinstance(own, str), own  # Keras's own raises ...
        assert isinstance(ours, str) and "labels must lie in [0, 4)" in ours, ours  # ... and so does smoothloss
        if backend == "tensorflow":
            assert ours.startswith("InvalidArgumentError") and "[7] [7]" in ours, ours
if backend == "jax":  # under jit, JAX has no run-time error: NaN, never a finite wrong number
    _, ours = fit(slk.SparseCategoricalCrossentropy(from_logits=True), bad, jit_compile=True)
    assert np.isnan(ours), ours

# a smoothing schedule: a keras.Variable that a callback assigns, read at every step
eps = keras.Variable(0.0, trainable=False, dtype="float32")

class Schedule(keras.callbacks.Callback):
    def on_train_batch_begin(self, batch, logs=None):
        eps.assign(0.1 * (batch + 1))

loss = slk.SparseCategoricalCrossentropy(from_logits=True, label_smoothing=eps)
keras.utils.set_random_seed(0)
model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(4)])
model.compile(optimizer="sgd", loss=loss)
model.fit(x, y, epochs=1, batch_size=8, verbose=0, callbacks=[Schedule()])
assert abs(float(eps.numpy()) - 0.4) < 1e-7
logits = model.predict(x, verbose=0)
for value in (0.0, 0.25, 1.0):
    eps.assign(value)
    ours = float(loss(y, logits))
    z = logits.astype(np.float64) - logits.max(-1, keepdims=True)
    nll = np.log(np.exp(z).sum(-1, keepdims=True)) - z
    q = np.full_like(nll, value / 4); q[np.arange(32), y] += 1 - value
    assert abs(ours - (q * nll).sum(-1).mean()) < 1e-5, (value, ours)
assert loss.get_config()["label_smoothing"] == 1.0
print("OK")
"""


@pytest.mark.parametrize("backend", ["tensorflow", "torch", "jax"])
def test_keras_fit_fails_on_bad_labels_and_follows_a_variable_schedule(backend):
    import importlib.util

    if importlib.util.find_spec(backend) is None or importlib.util.find_spec("keras") is None:
        pytest.skip(f"{backend} or keras is not installed")
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable, "-c", FIT], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stdout[-2000:] + proc.stderr[-4000:]


MIRRORED = r"""
import os
import numpy as np, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras, smoothloss.keras as slk
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
rng = np.random.default_rng(0)
x = rng.normal(size=(64, 5)).astype("float32")
y = rng.integers(0, 4, 64)
y[::5] = -1  # ignored: the replicas' valid counts differ
runs = {}
for name, make in (("keras", lambda: keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=-1)),
                   ("smoothloss", lambda: slk.SparseCategoricalCrossentropy(from_logits=True, ignore_class=-1))):
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(4)])
        model.compile(optimizer="sgd", loss=make())
    history = model.fit(x, y, epochs=2, batch_size=16, verbose=0, shuffle=False)
    runs[name] = (history.history["loss"], np.concatenate([w.ravel() for w in model.get_weights()]))
np.testing.assert_allclose(runs["smoothloss"][0], runs["keras"][0], rtol=1e-6)
np.testing.assert_allclose(runs["smoothloss"][1], runs["keras"][1], rtol=1e-5, atol=1e-7)
print("OK")
"""


def test_keras_fit_under_mirrored_strategy_matches_keras():
    """Two replicas (logical CPUs) whose batches hold different numbers of valid labels:
    smoothloss's loss, reduced by keras.losses.Loss, averages as Keras's own loss does."""
    import importlib.util

    if importlib.util.find_spec("tensorflow") is None or importlib.util.find_spec("keras") is None:
        pytest.skip("tensorflow or keras is not installed")
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable, "-c", MIRRORED], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stdout[-2000:] + proc.stderr[-4000:]
