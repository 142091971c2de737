"""Per-framework machinery: namespace dispatch, tracing detection, device lookup.

Nothing here imports a framework at module level. A framework is recognised only
when it is already in ``sys.modules`` (the caller handed us one of its arrays), the
way array-api-compat and einops do it.
"""

from __future__ import annotations

import sys
from typing import Any

import array_api_compat

__all__ = [
    "array_namespace", "as_arrays", "custom_gradient", "device", "dynamic_shape", "framework_name", "is_traced", "is_tensorflow",
]


def is_tensorflow(x: Any) -> bool:
    """True for ``tf.Tensor`` / ``tf.Variable`` (without importing TensorFlow)."""
    tf = sys.modules.get("tensorflow")
    if tf is None:
        return False
    return isinstance(x, (tf.Tensor, tf.Variable))


def as_arrays(*arrays: Any) -> tuple[Any, ...]:
    """The arrays, with a ``tf.Variable`` read into a ``tf.Tensor`` (which has ``ndim``
    and the operators the core needs); everything else is returned as it is."""
    tf = sys.modules.get("tensorflow")
    if tf is None:
        return arrays
    return tuple(tf.convert_to_tensor(a) if isinstance(a, tf.Variable) else a for a in arrays)


def framework_name(x: Any) -> str:
    """A short name of the library an array comes from, for error messages."""
    if is_tensorflow(x):
        return "tensorflow"
    if array_api_compat.is_torch_array(x):
        return "torch"
    if array_api_compat.is_jax_array(x):
        return "jax"
    if array_api_compat.is_numpy_array(x):
        return "numpy"
    return type(x).__module__.split(".")[0]


def array_namespace(*arrays: Any) -> Any:
    """The Array-API namespace shared by ``arrays`` (``None`` entries are skipped).

    Raises ``TypeError`` naming the libraries when arrays from two frameworks are mixed.
    """
    arrays = tuple(a for a in arrays if a is not None and not isinstance(a, (int, float, bool)))
    names = {framework_name(a) for a in arrays}
    if len(names) > 1:
        raise TypeError(
            f"arrays from different frameworks were mixed: {sorted(names)}; "
            "pass logits, targets and weight from one framework"
        )
    if names == {"tensorflow"}:
        from smoothloss.backends import tensorflow_namespace

        return tensorflow_namespace
    return array_api_compat.array_namespace(*arrays)


def device(x: Any) -> Any:
    """The device an array lives on (TensorFlow included)."""
    if is_tensorflow(x):
        return x.device
    return array_api_compat.device(x)


def is_traced(x: Any) -> bool:
    """True while ``x`` is being traced (jax.jit, tf.function, torch.compile).

    Checks that need values are skipped then: they would force a host sync or fail.
    """
    jax = sys.modules.get("jax")
    if jax is not None and isinstance(x, jax.core.Tracer):
        return True
    if is_tensorflow(x):
        tf = sys.modules["tensorflow"]
        return not tf.executing_eagerly()
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        return bool(torch.compiler.is_compiling() or torch.jit.is_tracing())
    return False


def dynamic_shape(x: Any) -> Any:
    """``x``'s shape: a tuple of ints, or, where an axis is unknown until run time (a
    ``tf.function`` input), TensorFlow's run-time shape tensor, for ``reshape``."""
    shape = tuple(x.shape)
    if None in shape and is_tensorflow(x):
        return sys.modules["tensorflow"].shape(x)
    return shape


def custom_gradient(x: Any) -> Any:
    """The framework's cross-entropy with the closed-form gradient registered, or None.

    ``f(logits, targets, weight, opts)`` from ``torch_autograd`` (torch.autograd.Function),
    ``jax_vjp`` (jax.custom_vjp) or ``tf_gradient`` (tf.custom_gradient); None for NumPy
    and array-api-strict, which have no autodiff.
    """
    name = framework_name(x)
    if name == "torch":
        from smoothloss.backends.torch_autograd import cross_entropy
    elif name == "jax":
        from smoothloss.backends.jax_vjp import cross_entropy
    elif name == "tensorflow":
        from smoothloss.backends.tf_gradient import cross_entropy
    else:
        return None
    return cross_entropy
