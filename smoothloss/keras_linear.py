"""``LinearCrossEntropyHead``: a Keras 3 output layer whose loss never holds the logits.

The layer owns the output projection of a classifier or language-model head and computes
the loss with :func:`smoothloss.linear_cross_entropy`, a chunk of rows at a time, so the
N×V logits are never held. It is public as ``smoothloss.keras.LinearCrossEntropyHead``
(the same class); importing either module registers it with Keras (package
``"smoothloss"``), so ``keras.models.load_model`` finds it without ``custom_objects``.

The small checks of Keras-only arguments (``from_logits``, ``ignore_class``, ``units``)
are :mod:`smoothloss._keras_support`'s, shared with :mod:`smoothloss.keras`.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

import smoothloss
from smoothloss import _filter
from smoothloss._keras_support import check_bool as _check_bool, check_int as _check_int
from smoothloss._keras_support import index_dtype as _index_dtype
from smoothloss._options import Options

__all__ = ["LinearCrossEntropyHead"]

# The smoothloss options the head takes (declared in smoothloss._options); its
# ``ignore_class`` is Keras's name for ``ignore_index`` and is checked as Keras's.
_OPTIONS = ("label_smoothing", "convention", "z_loss", "softcap")


# ----------------------------------------------------------------------------- the layer
@keras.saving.register_keras_serializable(package="smoothloss")
class LinearCrossEntropyHead(keras.layers.Layer):
    r"""An output projection whose loss never materialises the logits.

    The layer holds a ``Dense(units)`` projection, kernel (H, V) and bias (V,) in
    ``keras.layers.Dense``'s layout and order, so a Dense layer's weights load into it
    with ``set_weights``. ``call(inputs, labels)`` returns the label-smoothed
    cross-entropy of the logits ``inputs @ kernel + bias`` against integer ``labels``,
    averaged over the entries whose label is not ``ignore_class``, and adds it to the
    layer's losses. The loss and its gradient for ``inputs``, kernel and bias come from
    :func:`smoothloss.linear_cross_entropy`, a chunk of rows at a time, so the
    ``(N, V)`` logits (N = all of ``inputs``' leading axes) never exist at once.
    ``call(inputs)`` without labels, and :meth:`logits`, return the logits for
    inference.

    The loss is attached with ``add_loss``: a model whose output is this layer's loss
    is compiled without ``loss=`` and fitted on ``x=[inputs, labels]`` (no ``y``), on
    every Keras backend. Build a second model on the same layer to predict logits; the
    training model's output is the loss, one scalar per batch. A batch size known only
    at run time (TensorFlow's retrace after a partial last batch) runs the chunks in a
    ``tf.while_loop``.

    Args:
        units: V, the number of classes.
        use_bias: whether the projection has a bias.
        kernel_initializer: initializer of the (H, V) kernel.
        bias_initializer: initializer of the (V,) bias.
        label_smoothing: ε in [0, 1].
        ignore_class: a label value whose entries add nothing and leave the mean's
            denominator (Keras's name for ``ignore_index``), or ``None``.
        z_loss: coefficient of ``z_loss·logsumexp(logits)²`` per valid entry.
        softcap: if given, ``logits ← softcap·tanh(logits/softcap)`` in the loss.
        chunk_size: rows per chunk; ``None`` picks the default of :func:`smoothloss.linear_cross_entropy`.
        convention: ``"uniform"`` (ε/V to every class, Keras) or ``"others"`` (the
            target keeps 1-ε, every other class gets ε/(V-1)).
        filter_eps: gradient filtering (Cut Cross-Entropy's), as in
            :func:`smoothloss.linear_cross_entropy`; None: the exact gradient.
        **kwargs: :class:`keras.layers.Layer`'s arguments (``name``, ``dtype``, ...).

    Example:
        >>> import keras, numpy as np
        >>> from smoothloss.keras import LinearCrossEntropyHead
        >>> hidden, labels = keras.Input((16,)), keras.Input((), dtype="int32")
        >>> head = LinearCrossEntropyHead(10, label_smoothing=0.1, ignore_class=-1)
        >>> trainer = keras.Model([hidden, labels], head(hidden, labels))
        >>> trainer.compile(optimizer="adam")  # no loss=: the head adds it
        >>> rng = np.random.default_rng(0)
        >>> x, y = rng.normal(size=(64, 16)).astype("float32"), rng.integers(-1, 10, 64)
        >>> loss = trainer.fit([x, y], epochs=3, batch_size=16, verbose=0).history["loss"]
        >>> loss[-1] < loss[0]
        True
        >>> predictor = keras.Model(hidden, head(hidden))  # same weights, logits out
        >>> predictor.predict(x, verbose=0).shape
        (64, 10)
    """

    def __init__(
        self,
        units: int,
        use_bias: bool = True,
        kernel_initializer: Any = "glorot_uniform",
        bias_initializer: Any = "zeros",
        label_smoothing: float = 0.0,
        ignore_class: int | None = None,
        z_loss: float = 0.0,
        softcap: float | None = None,
        chunk_size: int | None = None,
        convention: str = "uniform",
        filter_eps: float | str | None = None,
        **kwargs: Any,
    ) -> None:
        given = locals()
        super().__init__(**kwargs)
        self.units = _check_int(units, "units", minimum=2)
        self.use_bias = _check_bool(use_bias, "use_bias")
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        checked = Options.checked(**{name: given[name] for name in _OPTIONS})
        for name in _OPTIONS:
            setattr(self, name, getattr(checked, name))
        self.ignore_class = _check_int(ignore_class, "ignore_class", optional=True)
        self.chunk_size = _check_int(chunk_size, "chunk_size", minimum=1, optional=True)
        _filter.resolve(filter_eps, 1.0, checked)  # its form, and softcap with smoothing (the value: at the call)
        self.filter_eps = filter_eps

    def _options(self) -> dict[str, Any]:
        """The smoothloss options (``_OPTIONS``) as this layer holds them."""
        return {name: getattr(self, name) for name in _OPTIONS}

    def build(self, input_shape: Any) -> None:
        self.kernel = self.add_weight(
            name="kernel", shape=(input_shape[-1], self.units), initializer=self.kernel_initializer
        )
        self.bias = (
            self.add_weight(name="bias", shape=(self.units,), initializer=self.bias_initializer)
            if self.use_bias
            else None
        )

    def logits(self, inputs: Any) -> Any:
        """``inputs @ kernel + bias``: shape ``inputs.shape[:-1] + (units,)``."""
        logits = ops.matmul(ops.convert_to_tensor(inputs, self.compute_dtype), self.kernel)
        return logits if self.bias is None else ops.add(logits, self.bias)

    def call(self, inputs: Any, labels: Any = None) -> Any:
        """The mean loss over the valid entries (added with ``add_loss``) when ``labels``
        (integer classes of ``inputs.shape[:-1]``) are given, else the logits."""
        if labels is None:
            return self.logits(inputs)
        loss = smoothloss.linear_cross_entropy(
            ops.convert_to_tensor(inputs, self.compute_dtype),
            ops.transpose(self.kernel),
            ops.cast(labels, _index_dtype()),
            bias=None if self.bias is None else self.bias.value,  # the backend's array
            chunk_size=self.chunk_size,
            filter_eps=self.filter_eps,
            ignore_index=self.ignore_class,
            **self._options(),
        )
        self.add_loss(loss)
        return loss

    def compute_output_spec(self, inputs: Any, labels: Any = None) -> keras.KerasTensor:
        """The shape and dtype of :meth:`call`'s result, without running the loss."""
        if labels is None:
            return keras.KerasTensor((*inputs.shape[:-1], self.units), dtype=self.compute_dtype)
        # the core accumulates 16-bit inputs in float32 and returns a float32 loss
        low = keras.backend.standardize_dtype(self.compute_dtype) in ("float16", "bfloat16")
        return keras.KerasTensor((), dtype="float32" if low else self.compute_dtype)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()  # name, trainable, dtype
        config.update(
            units=self.units,
            use_bias=self.use_bias,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            bias_initializer=keras.initializers.serialize(self.bias_initializer),
            ignore_class=self.ignore_class,
            chunk_size=self.chunk_size,
            filter_eps=self.filter_eps,
            **self._options(),
        )
        return config
