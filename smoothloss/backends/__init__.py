"""One place that answers "which framework is this array from".

:func:`framework` returns one cached binding object per framework
(:class:`~smoothloss.backends._base.Framework`): the namespace, the test for arrays
whose values cannot be read now, the index dtype and the native kernels.
:func:`losses` returns the entry points one layer up (the gradient bindings of the
dense, chunked and vocab-parallel losses, and the choice of path). :func:`bind` also
applies each framework's rule for mixed inputs.

Nothing here imports a framework at module level: a framework is recognised only when
it is already in ``sys.modules`` (the caller handed us one of its arrays), as
array-api-compat and einops do it, and its binding module
(``smoothloss.backends.torch``, ``.jax``, ``.tensorflow``) is imported on first use.
"""

from __future__ import annotations

import sys
from typing import Any

import array_api_compat

from smoothloss.backends._base import Framework, native_kernels, use_native_kernels

__all__ = [
    "Framework", "array_namespace", "bind", "framework", "framework_name", "losses", "native_kernels",
    "use_native_kernels",
]

_BOUND: dict[str, Framework] = {}
_LOSSES: dict[str, Any] = {}
_FOREIGN = (bool, int, float)


def framework_name(x: Any) -> str:
    """A short name of the library an array comes from: "torch", "jax", "tensorflow",
    "numpy", "array_api_strict", or the top-level module of its type."""
    name = _NAMES.get(type(x))
    if name is None:
        name = _NAMES[type(x)] = _name_of(x)
    return name


# framework_name by the array's type (which alone decides it), filled as types are met
_NAMES: dict[type, str] = {}


def _name_of(x: Any) -> str:
    tf = sys.modules.get("tensorflow")
    if tf is not None and isinstance(x, (tf.Tensor, tf.Variable)):
        return "tensorflow"
    if array_api_compat.is_torch_array(x):
        return "torch"
    if array_api_compat.is_jax_array(x):
        return "jax"
    if array_api_compat.is_numpy_array(x):
        return "numpy"
    return type(x).__module__.split(".")[0]


def _binding(name: str, example: Any) -> Framework:
    fw = _BOUND.get(name)
    if fw is None:
        # plain import statements, not importlib: torch.compile can trace these when the
        # first call to smoothloss happens inside a compiled function. A framework's loss
        # entry points (its autodiff layer) are imported with its facts.
        if name == "torch":
            from smoothloss.backends import torch as module, torch_autodiff as autodiff
        elif name == "jax":
            from smoothloss.backends import jax as module, jax_autodiff as autodiff
        elif name == "tensorflow":
            from smoothloss.backends import tensorflow as module, tensorflow_autodiff as autodiff
        else:
            module = autodiff = None
        if module is not None:
            fw = module.binding()
            _LOSSES[name] = autodiff.LOSSES
        else:
            from smoothloss.backends._autodiff import Losses

            fw = Framework(array_api_compat.array_namespace(example), name)
            _LOSSES[name] = Losses(fw)
        _BOUND[name] = fw
    return fw


def _scalar(a: Any) -> bool:
    """None or a Python scalar (NumPy scalars, which subclass float, are arrays here)."""
    return a is None or type(a) in _FOREIGN


def _arrays(arrays: tuple[Any, ...]) -> list[Any]:
    return [a for a in arrays if not _scalar(a)]


def framework(*arrays: Any) -> Framework:
    """The binding of the framework the arrays come from (``None`` and Python scalars
    are skipped; NumPy arrays next to JAX or TensorFlow arrays count as theirs).

    Raises ``TypeError`` naming the libraries when arrays of two frameworks are mixed.
    """
    # the common call first: arrays of one known type, whose framework is bound
    name = None
    for a in arrays:
        if a is None or type(a) in _FOREIGN:
            continue
        known = _NAMES.get(type(a))
        if known is None or (name is not None and known != name):
            name = None
            break
        name = known
    fw = None if name is None else _BOUND.get(name)
    if fw is not None:
        return fw
    given = _arrays(arrays)
    if not given:
        raise TypeError("expected at least one array")
    for a in given:
        if isinstance(a, (list, tuple)):
            raise TypeError(
                f"{type(a).__name__} is not a supported array type; make it an array of the "
                "logits' framework first (np.asarray, torch.as_tensor, jnp.asarray, tf.constant)"
            )
    names = {framework_name(a) for a in given}
    if len(names) > 1:
        joined = names - {"numpy"}
        if len(joined) != 1 or not joined & {"jax", "tensorflow"}:
            raise TypeError(
                f"arrays from different frameworks were mixed: {sorted(names)}; "
                "pass logits, targets and weight from one framework (JAX and TensorFlow "
                "accept NumPy arrays next to their own; PyTorch does not)"
            )
        names = joined
    (name,) = names
    return _binding(name, next(a for a in given if framework_name(a) == name))


def bind(*arrays: Any) -> tuple[Framework, tuple[Any, ...]]:
    """``(fw, arrays)``: the binding of the arrays' framework and the arrays made its own:
    a ``tf.Variable`` read into a tensor, NumPy arrays next to JAX or TensorFlow arrays
    converted to that framework's arrays (as optax and Keras accept them). ``None``
    entries and Python scalars pass through."""
    fw = framework(*arrays)
    if fw.name not in ("tensorflow", "jax"):  # (only these two convert arrays)
        return fw, arrays
    return fw, tuple(_own(fw, a) for a in arrays)


def _own(fw: Framework, a: Any) -> Any:
    if _scalar(a):
        return a
    if fw.name == "tensorflow":
        tf = sys.modules["tensorflow"]
        return tf.convert_to_tensor(a) if not isinstance(a, tf.Tensor) else a
    if fw.name == "jax" and array_api_compat.is_numpy_array(a):
        return sys.modules["jax.numpy"].asarray(a)
    return a


def losses(fw: Framework) -> Any:
    """The loss entry points of the framework whose facts are ``fw``
    (:class:`~smoothloss.backends._autodiff.Losses`: the autodiff registration and the
    one choice of path per framework), bound with the facts by :func:`framework`."""
    return _LOSSES[fw.name]


def array_namespace(*arrays: Any) -> Any:
    """The Array-API namespace shared by ``arrays`` (see :func:`framework`)."""
    return framework(*arrays).xp
