"""Drivers: how the conformance suite and ``python -m smoothloss check`` run one backend.

A driver makes arrays of its framework on a device, calls a function eagerly or traced
(``jax.jit``, ``tf.function``), and takes value-and-gradient with the framework's own
autodiff. Frameworks are imported only when a driver is used.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Callable

import numpy as np

__all__ = ["Driver", "DRIVERS", "get_driver", "available_drivers"]


class Driver:
    """Base driver: subclasses set ``name``, ``framework`` and ``traced``."""

    name = "?"
    framework = "?"
    traced = False
    has_autodiff = True

    def run_time_error(self) -> Any:
        """The error a traced call raises at run time for a bad label (the framework's
        own check: a graph assertion), or None where a traced call has none (JAX under
        jit: NaN). Eager calls raise ``ValueError`` before computing."""
        return None

    def __init__(self, device: str = "cpu") -> None:
        self.device_name = device

    @classmethod
    def installed(cls) -> bool:
        return importlib.util.find_spec(cls.framework) is not None

    # -- arrays ---------------------------------------------------------------
    def asarray(self, a: np.ndarray, dtype: str | None = None) -> Any:
        raise NotImplementedError

    def to_numpy(self, x: Any) -> np.ndarray:
        return np.asarray(x)

    def dtype(self, name: str) -> Any:
        raise NotImplementedError

    def supports(self, dtype_name: str) -> bool:
        return True

    def devices(self) -> list[str]:
        """The kinds of device this framework can run on here: 'cpu', 'cuda', ..."""
        return ["cpu"]

    def device_count(self, kind: str) -> int:
        """How many devices of ``kind`` (one of :meth:`devices`) there are."""
        return 1 if kind in self.devices() else 0

    def require_device(self) -> None:
        """Raise ``RuntimeError`` unless this driver's device exists here, so that a run
        asked for a missing device fails before it starts instead of running elsewhere."""
        kind, _, index = self.device_name.lower().partition(":")
        kind = "cuda" if kind == "gpu" else kind
        found = self.devices()
        if kind not in found:
            raise RuntimeError(f"{self.framework} has no {self.device_name} device (it has {', '.join(found)})")
        count = self.device_count(kind)
        if index and (not index.isdigit() or int(index) >= count):
            raise RuntimeError(f"{self.framework} has no {self.device_name} device (it has {count} {kind})")

    # -- calls ----------------------------------------------------------------
    def call(self, fn: Callable[..., Any], *arrays: Any) -> Any:
        """``fn(*arrays)``; traced drivers trace it first."""
        return fn(*arrays)

    def value_and_grad(self, fn: Callable[..., Any], x: Any, *rest: Any) -> tuple[Any, Any]:
        """(fn(x, *rest), d sum(fn) / dx) by the framework's autodiff."""
        raise NotImplementedError

    def dtype_name(self, x: Any) -> str:
        """'float32', 'bfloat16', ... for an array of this framework."""
        name = getattr(x.dtype, "name", None)
        return name if isinstance(name, str) else str(x.dtype).rsplit(".", 1)[-1]

    def grads(self, fn: Callable[..., Any], args: tuple[Any, ...], argnums: tuple[int, ...]) -> list[Any]:
        """Gradients of sum(fn(*args)) with respect to ``args[i]`` for i in ``argnums``."""
        raise NotImplementedError

    def device_of(self, x: Any) -> str:
        from smoothloss.backends import framework

        return str(framework(x).device(x) or "cpu")


class NumpyDriver(Driver):
    name = framework = "numpy"
    has_autodiff = False

    def asarray(self, a: np.ndarray, dtype: str | None = None) -> Any:
        return np.asarray(a, dtype=dtype) if dtype else np.asarray(a).copy()

    def dtype(self, name: str) -> Any:
        return np.dtype(name)

    def supports(self, dtype_name: str) -> bool:
        return dtype_name != "bfloat16"


class StrictDriver(Driver):
    name = framework = "array_api_strict"
    has_autodiff = False

    def _xp(self) -> Any:
        import array_api_strict

        return array_api_strict

    def asarray(self, a: np.ndarray, dtype: str | None = None) -> Any:
        xp = self._xp()
        a = np.asarray(a, dtype=dtype) if dtype else np.asarray(a)
        return xp.asarray(a)

    def to_numpy(self, x: Any) -> np.ndarray:
        return np.asarray(x)

    def dtype(self, name: str) -> Any:
        return getattr(self._xp(), name)

    def supports(self, dtype_name: str) -> bool:
        return dtype_name in ("float32", "float64")


class TorchDriver(Driver):
    name = framework = "torch"

    def _torch(self) -> Any:
        import torch

        return torch

    def devices(self) -> list[str]:
        torch = self._torch()
        out = ["cpu"]
        if torch.cuda.is_available():
            out.append("cuda")
        return out

    def device_count(self, kind: str) -> int:
        if kind == "cuda":
            torch = self._torch()
            return torch.cuda.device_count() if torch.cuda.is_available() else 0
        return super().device_count(kind)

    def asarray(self, a: np.ndarray, dtype: str | None = None) -> Any:
        torch = self._torch()
        t = torch.from_numpy(np.array(a, order="C")).to(self.device_name)  # keeps 0-d arrays 0-d
        return t if dtype is None else t.to(self.dtype(dtype))

    def to_numpy(self, x: Any) -> np.ndarray:
        torch = self._torch()
        x = x.detach().cpu()
        if x.dtype == torch.bfloat16:
            x = x.float()
        return x.numpy()

    def dtype(self, name: str) -> Any:
        return getattr(self._torch(), name)

    def value_and_grad(self, fn: Callable[..., Any], x: Any, *rest: Any) -> tuple[Any, Any]:
        x = x.detach().clone().requires_grad_(True)
        out = fn(x, *rest)
        out.sum().backward()
        return out.detach(), x.grad

    def grads(self, fn: Callable[..., Any], args: tuple[Any, ...], argnums: tuple[int, ...]) -> list[Any]:
        torch = self._torch()
        args = tuple(
            a.detach().clone().requires_grad_(True) if i in argnums else a for i, a in enumerate(args)
        )
        return list(torch.autograd.grad(fn(*args).sum(), [args[i] for i in argnums]))


class JaxDriver(Driver):
    name = framework = "jax"

    def _jax(self) -> Any:
        import jax

        return jax

    @staticmethod
    def _kind(d: Any) -> str:
        """'cpu', 'cuda', 'rocm', 'tpu', ...: JAX calls every GPU 'gpu'; its client says which."""
        if d.platform != "gpu":
            return str(d.platform)
        version = str(getattr(d.client, "platform_version", "")).lower()
        return next((k for k in ("cuda", "rocm", "oneapi") if k in version), "cuda")

    def devices(self) -> list[str]:
        jax = self._jax()
        return sorted({self._kind(d) for d in jax.devices()} | {"cpu"})

    def device_count(self, kind: str) -> int:
        try:
            return len(self._jax().devices(kind))
        except RuntimeError:  # no such backend
            return 0

    def _device(self) -> Any:
        jax = self._jax()
        kind, _, index = self.device_name.partition(":")
        return jax.devices(kind)[int(index or 0)]

    def device_of(self, x: Any) -> str:
        try:
            d = min(x.devices(), key=lambda d: d.id)
        except Exception:  # a tracer, or not a jax.Array
            return super().device_of(x)
        return f"{self._kind(d)}:{d.id}"

    def asarray(self, a: np.ndarray, dtype: str | None = None) -> Any:
        jax = self._jax()
        x = jax.device_put(np.asarray(a), self._device())
        return x if dtype is None else x.astype(self.dtype(dtype))

    def to_numpy(self, x: Any) -> np.ndarray:
        x = np.asarray(x)
        return x.astype(np.float32) if x.dtype.name == "bfloat16" else x

    def dtype(self, name: str) -> Any:
        import jax.numpy as jnp

        return getattr(jnp, name)

    def value_and_grad(self, fn: Callable[..., Any], x: Any, *rest: Any) -> tuple[Any, Any]:
        jax = self._jax()

        def total(x: Any, *rest: Any) -> Any:
            out = fn(x, *rest)
            return out.sum(), out

        (_, out), g = jax.value_and_grad(total, has_aux=True)(x, *rest)
        return out, g

    def _grads(self, fn: Callable[..., Any], argnums: tuple[int, ...]) -> Any:
        return self._jax().grad(lambda *a: fn(*a).sum(), argnums=argnums)

    def grads(self, fn: Callable[..., Any], args: tuple[Any, ...], argnums: tuple[int, ...]) -> list[Any]:
        return list(self._grads(fn, argnums)(*args))


class JaxJitDriver(JaxDriver):
    name = "jax-jit"
    traced = True

    def call(self, fn: Callable[..., Any], *arrays: Any) -> Any:
        return self._jax().jit(fn)(*arrays)

    def value_and_grad(self, fn: Callable[..., Any], x: Any, *rest: Any) -> tuple[Any, Any]:
        jax = self._jax()

        def total(x: Any, *rest: Any) -> Any:
            out = fn(x, *rest)
            return out.sum(), out

        (_, out), g = jax.jit(jax.value_and_grad(total, has_aux=True))(x, *rest)
        return out, g

    def grads(self, fn: Callable[..., Any], args: tuple[Any, ...], argnums: tuple[int, ...]) -> list[Any]:
        return list(self._jax().jit(self._grads(fn, argnums))(*args))


class TensorflowDriver(Driver):
    name = framework = "tensorflow"

    def _tf(self) -> Any:
        import tensorflow as tf

        tf.get_logger().setLevel("ERROR")  # one tf.function per case retraces by design
        return tf

    def devices(self) -> list[str]:
        # logical devices: the ones tf.device can place on (tf.device silently puts
        # work on the CPU when the device asked for is missing)
        tf = self._tf()
        out = ["cpu"]
        if tf.config.list_logical_devices("GPU"):
            out.append("cuda")
        return out

    def device_count(self, kind: str) -> int:
        tf = self._tf()
        return len(tf.config.list_logical_devices("GPU" if kind in ("cuda", "gpu") else kind.upper()))

    def _tf_device(self) -> str:
        kind, _, index = self.device_name.partition(":")
        return f"/{'GPU' if kind in ('cuda', 'gpu') else 'CPU'}:{index or 0}"

    def asarray(self, a: np.ndarray, dtype: str | None = None) -> Any:
        tf = self._tf()
        with tf.device(self._tf_device()):
            x = tf.identity(tf.convert_to_tensor(np.asarray(a)))
            return x if dtype is None else tf.cast(x, self.dtype(dtype))

    def to_numpy(self, x: Any) -> np.ndarray:
        tf = self._tf()
        x = tf.convert_to_tensor(x)  # IndexedSlices from a gather's gradient
        if x.dtype == tf.bfloat16:
            x = tf.cast(x, tf.float32)
        return x.numpy()

    def dtype(self, name: str) -> Any:
        return getattr(self._tf(), name)

    def _value_and_grad(self, fn: Callable[..., Any], x: Any, *rest: Any) -> tuple[Any, Any]:
        tf = self._tf()
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = fn(x, *rest)
            total = tf.reduce_sum(out)
        return out, tape.gradient(total, x)

    def value_and_grad(self, fn: Callable[..., Any], x: Any, *rest: Any) -> tuple[Any, Any]:
        return self._value_and_grad(fn, x, *rest)

    def _grads(self, fn: Callable[..., Any], args: tuple[Any, ...], argnums: tuple[int, ...]) -> list[Any]:
        tf = self._tf()
        with tf.GradientTape() as tape:
            for i in argnums:
                tape.watch(args[i])
            total = tf.reduce_sum(fn(*args))
        return tape.gradient(total, [args[i] for i in argnums])

    def grads(self, fn: Callable[..., Any], args: tuple[Any, ...], argnums: tuple[int, ...]) -> list[Any]:
        return self._grads(fn, args, argnums)


class TensorflowFunctionDriver(TensorflowDriver):
    name = "tensorflow-function"
    traced = True

    def run_time_error(self) -> Any:
        return self._tf().errors.InvalidArgumentError

    def call(self, fn: Callable[..., Any], *arrays: Any) -> Any:
        return self._tf().function(fn)(*arrays)

    def value_and_grad(self, fn: Callable[..., Any], x: Any, *rest: Any) -> tuple[Any, Any]:
        tf = self._tf()
        return tf.function(lambda x, *rest: self._value_and_grad(fn, x, *rest))(x, *rest)

    def grads(self, fn: Callable[..., Any], args: tuple[Any, ...], argnums: tuple[int, ...]) -> list[Any]:
        return self._tf().function(lambda *a: self._grads(fn, a, argnums))(*args)


DRIVERS: dict[str, type[Driver]] = {
    d.name: d
    for d in (
        NumpyDriver,
        StrictDriver,
        TorchDriver,
        JaxDriver,
        JaxJitDriver,
        TensorflowDriver,
        TensorflowFunctionDriver,
    )
}


def get_driver(name: str, device: str = "cpu") -> Driver:
    return DRIVERS[name](device)


def available_drivers() -> list[str]:
    return [name for name, cls in DRIVERS.items() if cls.installed()]
