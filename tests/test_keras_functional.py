"""smoothloss.keras's functional forms against Keras's own, side by side.

``categorical_crossentropy``, ``sparse_categorical_crossentropy`` and
``binary_crossentropy`` take Keras 3's arguments and return the per-example loss, as
``keras.losses.<same name>`` does. Values and gradients (``tf.GradientTape``) are
compared on the TensorFlow Keras backend, in float32, to 1e-6 relative; the warnings
Keras gives are compared message for message and category for category.
"""

from __future__ import annotations

import inspect
import warnings

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")
if keras.backend.backend() != "tensorflow":
    pytest.skip("compared on Keras's TensorFlow backend", allow_module_level=True)

import smoothloss.keras as sk  # noqa: E402
from smoothloss.testing import rel_err  # noqa: E402

ops = keras.ops
TOL = 1e-6
K = 5
IGNORE = -1
FUNCTIONS = ["binary_crossentropy", "categorical_crossentropy", "sparse_categorical_crossentropy"]
CLASSES = {
    "binary_crossentropy": sk.BinaryCrossentropy,
    "categorical_crossentropy": sk.CategoricalCrossentropy,
    "sparse_categorical_crossentropy": sk.SparseCategoricalCrossentropy,
}
# layout -> (y_pred shape, class axis); the per-example loss has the shape without the axis
LAYOUTS = {"2d": ((6, K), -1), "3d-last": ((3, 4, K), -1), "3d-axis1": ((3, K, 4), 1)}


# ----------------------------------------------------------------------------- helpers
def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _data(layout: str, *, from_logits: bool, ignore: bool = False, seed: int = 0):
    """(y_pred, soft targets, integer labels, axis), float32."""
    shape, axis = LAYOUTS[layout]
    rng = np.random.default_rng(seed)
    logits = (2.0 * rng.normal(size=shape)).astype(np.float32)
    y_pred = logits if from_logits else _softmax(logits, axis).astype(np.float32)
    positions = tuple(s for i, s in enumerate(shape) if i != axis % len(shape))
    soft = np.moveaxis(rng.dirichlet(np.ones(K), size=positions), -1, axis).astype(np.float32)
    labels = rng.integers(0, K, size=positions)
    if ignore:
        labels.flat[::3] = IGNORE
    return y_pred, soft, labels, axis


def _binary_data(layout: str, *, from_logits: bool, seed: int = 0):
    """(y_pred, targets half hard 0/1 and half soft, axis), float32."""
    shape, axis = LAYOUTS[layout]
    rng = np.random.default_rng(seed)
    logits = (2.5 * rng.normal(size=shape)).astype(np.float32)
    y_pred = logits if from_logits else (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
    y_true = rng.random(shape).astype(np.float32)
    y_true.flat[::2] = np.round(y_true.flat[::2])
    return y_pred, y_true, axis


def _value_and_grad(f, x: np.ndarray):
    """``f(x)`` and the gradient of ``sum(w·f(x))`` for fixed random ``w``, by tf.GradientTape."""
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        out = f(xt)
        w = tf.constant(np.random.default_rng(1).uniform(0.5, 1.5, size=tuple(out.shape)), out.dtype)
        total = tf.reduce_sum(w * out)
    return out.numpy(), tape.gradient(total, xt).numpy()


def _assert_same(ours, theirs, *, tol: float = TOL) -> None:
    (v1, g1), (v2, g2) = ours, theirs
    assert v1.dtype == v2.dtype == np.float32
    assert np.all(np.isfinite(v1)) and np.all(np.isfinite(g1))
    assert rel_err(v1, v2) <= tol, (v1, v2)
    assert rel_err(g1, g2) <= tol, np.max(np.abs(g1 - g2))


def _recorded(f):
    """``f()`` and the warnings it gave, as (category, message, filename)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = f()
    return out, [(w.category, str(w.message), w.filename) for w in caught]


# ----------------------------------------------------------------------------- the public names
@pytest.mark.parametrize("name", FUNCTIONS)
def test_function_is_public_and_registered(name):
    fn = getattr(sk, name)
    assert name in sk.__all__ and callable(fn)
    assert keras.saving.get_registered_name(fn) == f"smoothloss>{name}"
    assert keras.saving.get_registered_object(f"smoothloss>{name}") is fn
    assert keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(fn)) is fn


@pytest.mark.parametrize("name", FUNCTIONS)
def test_signature_is_keras_then_keyword_only_options(name):
    """Keras 3's parameters in Keras's order with Keras's defaults; any addition is keyword-only."""
    theirs = list(inspect.signature(getattr(keras.losses, name)).parameters.values())
    ours = list(inspect.signature(getattr(sk, name)).parameters.values())
    assert [(p.name, p.default, p.kind) for p in ours[: len(theirs)]] == [
        (p.name, p.default, p.kind) for p in theirs
    ]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in ours[len(theirs):])
    if name == "sparse_categorical_crossentropy":
        assert ours[len(theirs)].name == "label_smoothing"


# ----------------------------------------------------------------------------- values and gradients
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("from_logits", [True, False], ids=["logits", "probs"])
def test_categorical_matches_keras(from_logits, label_smoothing, layout):
    y_pred, soft, _, axis = _data(layout, from_logits=from_logits)
    ref_targets, ref_smoothing = soft, label_smoothing
    if axis != -1 and label_smoothing:  # Keras smooths with the wrong K there (xfail below)
        ref_targets, ref_smoothing = soft * (1 - label_smoothing) + label_smoothing / K, 0.0
    _assert_same(
        _value_and_grad(lambda x: sk.categorical_crossentropy(soft, x, from_logits, label_smoothing, axis), y_pred),
        _value_and_grad(
            lambda x: keras.losses.categorical_crossentropy(ref_targets, x, from_logits, ref_smoothing, axis), y_pred
        ),
    )


@pytest.mark.xfail(
    strict=True,
    reason="Keras 3.15 categorical_crossentropy smooths with K = y_true.shape[-1], not "
    "y_true.shape[axis]: with axis=1 its smoothed target does not sum to 1",
)
def test_keras_smoothing_with_axis_1():
    y_pred, soft, _, axis = _data("3d-axis1", from_logits=True)
    kwargs = dict(from_logits=True, label_smoothing=0.1, axis=axis)
    ours = sk.categorical_crossentropy(soft, y_pred, **kwargs)
    theirs = keras.losses.categorical_crossentropy(soft, y_pred, **kwargs)
    assert rel_err(ops.convert_to_numpy(ours), ops.convert_to_numpy(theirs)) <= TOL


@pytest.mark.parametrize("layout", ["2d", "3d-last"])  # Keras's TensorFlow backend takes axis=-1 only
@pytest.mark.parametrize("ignore_class", [None, IGNORE], ids=["all", "ignore_class"])
@pytest.mark.parametrize("from_logits", [True, False], ids=["logits", "probs"])
def test_sparse_matches_keras(from_logits, ignore_class, layout):
    y_pred, _, labels, axis = _data(layout, from_logits=from_logits, ignore=ignore_class is not None)
    args = (from_logits, ignore_class, axis)
    ours = _value_and_grad(lambda x: sk.sparse_categorical_crossentropy(labels, x, *args), y_pred)
    theirs = _value_and_grad(lambda x: keras.losses.sparse_categorical_crossentropy(labels, x, *args), y_pred)
    _assert_same(ours, theirs)
    if ignore_class is not None:
        assert np.all(ours[0][labels == IGNORE] == 0)
        ours = sk.sparse_categorical_crossentropy(labels, y_pred, *args)
        theirs = keras.losses.sparse_categorical_crossentropy(labels, tf.constant(y_pred), *args)
        mask = ops.convert_to_numpy(ours._keras_mask)
        np.testing.assert_array_equal(mask, ops.convert_to_numpy(theirs._keras_mask))
        np.testing.assert_array_equal(mask, labels != IGNORE)


@pytest.mark.parametrize("ignore_class", [None, IGNORE], ids=["all", "ignore_class"])
@pytest.mark.parametrize("from_logits", [True, False], ids=["logits", "probs"])
def test_sparse_axis_1_is_keras_on_the_moved_axis(from_logits, ignore_class):
    """Keras's TensorFlow backend refuses axis=1; ours equals Keras's on the class axis moved last."""
    y_pred, _, labels, axis = _data("3d-axis1", from_logits=from_logits, ignore=ignore_class is not None)
    with pytest.raises(ValueError, match="Only axis=-1"):
        keras.losses.sparse_categorical_crossentropy(labels, tf.constant(y_pred), from_logits, ignore_class, axis)
    args = (from_logits, ignore_class)
    v, g = _value_and_grad(lambda x: sk.sparse_categorical_crossentropy(labels, x, *args, axis), y_pred)
    ref = _value_and_grad(
        lambda x: keras.losses.sparse_categorical_crossentropy(labels, x, *args, -1),
        np.moveaxis(y_pred, axis, -1),
    )
    _assert_same((v, np.moveaxis(g, axis, -1)), ref)


@pytest.mark.parametrize("ignore_class", [None, IGNORE], ids=["all", "ignore_class"])
@pytest.mark.parametrize("from_logits", [True, False], ids=["logits", "probs"])
def test_smoothed_sparse_is_keras_categorical_on_one_hot(from_logits, ignore_class):
    """The keyword-only ``label_smoothing`` (none in Keras's sparse function)."""
    y_pred, _, labels, axis = _data("3d-last", from_logits=from_logits, ignore=ignore_class is not None)
    valid = labels != IGNORE
    one_hot = np.eye(K, dtype=np.float32)[np.where(valid, labels, 0)]

    def theirs(x):
        loss = keras.losses.categorical_crossentropy(one_hot, x, from_logits, label_smoothing=0.1, axis=axis)
        return tf.where(valid, loss, 0.0)

    _assert_same(
        _value_and_grad(
            lambda x: sk.sparse_categorical_crossentropy(labels, x, from_logits, ignore_class, label_smoothing=0.1),
            y_pred,
        ),
        _value_and_grad(theirs, y_pred),
    )


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("from_logits", [True, False], ids=["logits", "probs"])
def test_binary_matches_keras(from_logits, label_smoothing, layout):
    y_pred, y_true, axis = _binary_data(layout, from_logits=from_logits)
    args = (from_logits, label_smoothing, axis)
    _assert_same(
        _value_and_grad(lambda x: sk.binary_crossentropy(y_true, x, *args), y_pred),
        _value_and_grad(lambda x: keras.losses.binary_crossentropy(y_true, x, *args), y_pred),
    )


def _class_kwargs(name: str, args: tuple) -> dict:
    keras_params = list(inspect.signature(getattr(keras.losses, name)).parameters)[2:]
    return dict(zip(keras_params, args))


@pytest.mark.parametrize(
    "name, args, options",
    [
        ("categorical_crossentropy", (False, 0.1, 1), {}),
        ("categorical_crossentropy", (True, 0.2, -1), {"convention": "others", "z_loss": 1e-3, "softcap": 5.0}),
        ("sparse_categorical_crossentropy", (False, IGNORE, 1), {"label_smoothing": 0.1}),
        ("sparse_categorical_crossentropy", (True, None, -1), {"label_smoothing": 0.2, "z_loss": 1e-3}),
        ("binary_crossentropy", (False, 0.1, 1), {}),
        ("binary_crossentropy", (True, 0.0, -1), {}),
    ],
)
def test_function_is_the_class_without_reduction(name, args, options):
    """The function and the class's call run the same code: equal bit for bit."""
    layout = "3d-axis1" if args[-1] == 1 else "3d-last"
    if name == "binary_crossentropy":
        y_pred, y_true, _ = _binary_data(layout, from_logits=args[0])
    else:
        y_pred, soft, labels, _ = _data(layout, from_logits=args[0], ignore=args[1] == IGNORE)
        y_true = labels if name.startswith("sparse") else soft
    ours = getattr(sk, name)(y_true, y_pred, *args, **options)
    loss = CLASSES[name](**_class_kwargs(name, args), **options, reduction=None)
    np.testing.assert_array_equal(ops.convert_to_numpy(ours), ops.convert_to_numpy(loss(y_true, y_pred)))


# ----------------------------------------------------------------------------- warnings
@pytest.mark.parametrize("traced", [False, True], ids=["eager-keras-activation", "tf-function-tf-op"])
@pytest.mark.parametrize("from_logits", [False, True], ids=["probs", "logits-warns"])
@pytest.mark.parametrize("name", FUNCTIONS)
def test_activation_output_like_keras(name, from_logits, traced):
    """On TensorFlow Keras uses the logits behind a softmax/sigmoid output whatever
    ``from_logits`` says, and warns (UserWarning) when it says True; so do ours."""
    x = np.array([[40.0, 0.0, 0.0, -3.0, 1.0], [0.5, -1.0, 2.0, 0.0, 30.0]], dtype=np.float32)
    if name == "binary_crossentropy":
        activation = tf.nn.sigmoid if traced else keras.activations.sigmoid
        y_true = np.array([[0.0, 1.0, 1.0, 0.0, 1.0], [1.0, 0.0, 0.5, 1.0, 0.0]], np.float32)
    else:
        activation = tf.nn.softmax if traced else keras.activations.softmax
        labels = np.array([1, 2])
        y_true = labels if name.startswith("sparse") else np.eye(K, dtype=np.float32)[labels]

    def run(fn):
        f = lambda z: fn(y_true, activation(z), from_logits)  # noqa: E731
        return _recorded(lambda: _value_and_grad(tf.function(f) if traced else f, x))

    ours, our_warnings = run(getattr(sk, name))
    theirs, their_warnings = run(getattr(keras.losses, name))
    _assert_same(ours, theirs)
    assert [w[:2] for w in our_warnings] == [w[:2] for w in their_warnings]
    assert len(our_warnings) == from_logits
    if from_logits:
        assert our_warnings[0][0] is UserWarning
        assert f"`{name}` received `from_logits=True`" in our_warnings[0][1]


def test_sparse_with_ignore_class_neither_follows_nor_warns():
    """Keras masks y_pred before its crossentropy, which loses the softmax behind it."""
    x = np.array([[4.0, 0.0, 0.0, -3.0, 1.0], [0.5, -1.0, 2.0, 0.0, 3.0]], dtype=np.float32)
    labels = np.array([1, IGNORE])
    ours, our_warnings = _recorded(lambda: _value_and_grad(
        lambda z: sk.sparse_categorical_crossentropy(labels, keras.activations.softmax(z), True, IGNORE), x
    ))
    theirs, their_warnings = _recorded(lambda: _value_and_grad(
        lambda z: keras.losses.sparse_categorical_crossentropy(labels, keras.activations.softmax(z), True, IGNORE), x
    ))
    _assert_same(ours, theirs)
    assert our_warnings == their_warnings == []


def test_last_axis_of_size_1_warns_like_keras():
    """Keras's SyntaxWarning for ``y_pred.shape[-1] == 1`` (whatever ``axis`` is), from the
    function and the class, attributed to the caller as Keras's is."""
    y_pred, soft, _, _ = _data("3d-axis1", from_logits=True)
    y_pred, soft = y_pred[..., :1], soft[..., :1]  # (3, K, 1), classes on axis 1
    args = (True, 0.0, 1)
    ours, our_warnings = _recorded(lambda: sk.categorical_crossentropy(soft, y_pred, *args))
    theirs, their_warnings = _recorded(lambda: keras.losses.categorical_crossentropy(soft, y_pred, *args))
    assert rel_err(ops.convert_to_numpy(ours), ops.convert_to_numpy(theirs)) <= TOL
    assert our_warnings == their_warnings
    assert [w[0] for w in our_warnings] == [SyntaxWarning] and our_warnings[0][2] == __file__
    assert "expected y_pred.shape to be (batch_size, num_classes)" in our_warnings[0][1]
    kwargs = dict(from_logits=True, axis=1, reduction=None)
    _, our_class_warnings = _recorded(lambda: sk.CategoricalCrossentropy(**kwargs)(soft, y_pred))
    _, their_class_warnings = _recorded(lambda: keras.losses.CategoricalCrossentropy(**kwargs)(soft, y_pred))
    assert [w[:2] for w in our_class_warnings] == [w[:2] for w in their_class_warnings] == [w[:2] for w in our_warnings]


def test_one_class_warns_like_keras_then_raises_as_the_class_does():
    """K = 1 on the class axis: Keras warns and returns 0; ours warns the same, then the
    core refuses the single class (ValueError), as the class always has."""
    y_true, y_pred = np.ones((4, 1), np.float32), np.zeros((4, 1), np.float32)
    _, their_warnings = _recorded(lambda: keras.losses.categorical_crossentropy(y_true, y_pred))
    function = lambda: sk.categorical_crossentropy(y_true, y_pred)  # noqa: E731
    method = lambda: sk.CategoricalCrossentropy()(y_true, y_pred)  # noqa: E731
    for call in (function, method):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with pytest.raises(ValueError, match="K=1"):
                call()
        assert [(w.category, str(w.message)) for w in caught] == [w[:2] for w in their_warnings]
        assert their_warnings[0][0] is SyntaxWarning


@pytest.mark.parametrize(
    "name, kwargs, error",
    [
        ("categorical_crossentropy", {"from_logits": 1}, TypeError),
        ("categorical_crossentropy", {"label_smoothing": 1.5}, ValueError),
        ("categorical_crossentropy", {"axis": True}, TypeError),
        ("categorical_crossentropy", {"z_loss": 1e-3}, ValueError),  # needs from_logits=True
        ("categorical_crossentropy", {"from_logits": True, "convention": "timm"}, ValueError),
        ("sparse_categorical_crossentropy", {"ignore_class": 1.5}, TypeError),
        ("sparse_categorical_crossentropy", {"from_logits": True, "softcap": -1.0}, ValueError),
        ("binary_crossentropy", {"label_smoothing": -0.1}, ValueError),
        ("binary_crossentropy", {"axis": 1.0}, TypeError),
    ],
)
def test_bad_arguments_raise_as_the_class_does(name, kwargs, error):
    y_pred, soft, labels, _ = _data("2d", from_logits=True)
    y_true = labels if name.startswith("sparse") else soft
    with pytest.raises(error) as from_class:
        CLASSES[name](**kwargs)
    with pytest.raises(error) as from_function:
        getattr(sk, name)(y_true, y_pred, **kwargs)
    assert str(from_function.value) == str(from_class.value)


# ----------------------------------------------------------------------------- in a model
def test_compiled_with_the_function_trains_like_keras():
    """``model.compile(loss=<function>)``: Keras wraps it (traced by tf.function) as it
    wraps its own; the same model trains to the same losses."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype(np.float32)
    y = rng.integers(0, K, size=64)

    def train(loss):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(K, activation="softmax")])
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss=loss)
        return model.fit(x, y, epochs=3, batch_size=16, shuffle=False, verbose=0).history["loss"]

    ours, theirs = train(sk.sparse_categorical_crossentropy), train(keras.losses.sparse_categorical_crossentropy)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5)


# ----------------------------------------------------------------------------- shapes, as Keras checks them
@pytest.mark.parametrize("name", ["binary_crossentropy", "categorical_crossentropy"])
def test_dense_targets_of_another_shape_raise_keras_error(name):
    """Keras's own check and text (its upstream ``test_shape_mismatch``): a ValueError
    that names both shapes, from the class and from the function."""
    y_true = np.array([[0.0], [1.0], [0.0]], dtype="float32")
    y_pred = np.full((3, 3), 1.0 / 3.0, dtype="float32")
    text = r"must have the same shape\. Received: target\.shape=\(3, 1\), output\.shape=\(3, 3\)"
    with pytest.raises(ValueError, match=text):
        CLASSES[name]()(y_true, y_pred)
    with pytest.raises(ValueError, match=text):
        getattr(sk, name)(y_true, y_pred)
    with pytest.raises(ValueError, match=r"must have the same rank \(ndim\)"):
        getattr(sk, name)(y_true[None], y_pred)


@pytest.mark.parametrize("from_logits", [False, True])
@pytest.mark.parametrize("labels_rank", [1, 2])
def test_binary_class_aligns_a_trailing_axis_of_size_1_like_keras(from_logits, labels_rank):
    """``BinaryCrossentropy()(labels (N,), predictions (N, 1))`` (a Dense(1) head), and the
    reverse, are brought to one rank first, as Keras's class does. Expectation: the mean
    of -[t·log p + (1-t)·log(1-p)], in float64."""
    t = np.array([1.0, 0.0, 1.0, 1.0])
    p = np.array([0.8, 0.3, 0.6, 0.05])
    expected = float(np.mean(-(t * np.log(p) + (1 - t) * np.log(1 - p))))
    y_pred = (np.log(p) - np.log1p(-p)) if from_logits else p
    y_true, y_pred = (t, y_pred[:, None]) if labels_rank == 1 else (t[:, None], y_pred)
    got = float(sk.BinaryCrossentropy(from_logits=from_logits)(y_true, y_pred.astype("float32")))
    assert rel_err(got, expected) < 1e-6
