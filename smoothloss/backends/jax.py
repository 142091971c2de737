"""The JAX binding's facts and kernels: tracer-aware value checks, the index dtype of
the x64 switch, and the native kernels.

A leaf: it imports no part of the algorithm. The ``custom_jvp``/``custom_vjp``
registrations, the chunk loop as a ``lax.scan`` and the Explicit-sharding handling are
:mod:`smoothloss.backends.jax_autodiff`.
"""

from __future__ import annotations

from typing import Any

import array_api_compat
import jax
import jax.numpy as jnp

from smoothloss.backends._base import Framework, Kernels

__all__ = ["FW", "JaxFramework", "JaxKernels", "binding", "checkify_labels"]

# Whether traced labels are checked through jax.experimental.checkify (checkify_labels).
_CHECKIFY = [False]


def checkify_labels(enabled: bool = True) -> bool:
    """Report out-of-range labels of traced calls through ``jax.experimental.checkify``.

    Eager calls always check labels (``ValueError``). Under ``jax.jit`` JAX has no
    run-time error: a label outside ``[0, K)`` that is not ``ignore_index`` gives a NaN
    loss at its position, and no exception. With this switch on, every traced call adds
    a ``checkify.check``; the caller then functionalises its step with
    ``checkify.checkify`` (a staged ``check`` that is not functionalised fails to
    trace) and reads or throws the error it returns. Returns the previous setting.

    Example:
        >>> import jax, jax.numpy as jnp, smoothloss, smoothloss.jax
        >>> from jax.experimental import checkify
        >>> previous = smoothloss.jax.checkify_labels(True)
        >>> step = jax.jit(checkify.checkify(lambda x, y: smoothloss.cross_entropy(x, y)))
        >>> err, loss = step(jnp.zeros((2, 4)), jnp.array([1, 7]))
        >>> print(err.get().split(" (")[0])
        labels must lie in [0, 4); found out-of-range values, e.g. 7 and 7
        >>> _ = smoothloss.jax.checkify_labels(previous)
    """
    previous = _CHECKIFY[0]
    _CHECKIFY[0] = bool(enabled)
    return previous


class JaxKernels(Kernels):
    """The Array-API composition, but for the label term of the gradient: a scatter of one
    entry per row (batched over the rows, so that XLA's partitioner keeps it sharded as
    the rows are) instead of the composition's compare and select at every logit, which
    XLA:CPU's backward loop runs more slowly. The core hands it labels in [0, K) only (ignored and
    unchecked positions are mapped to class 0 with a zero or NaN row); an index out of
    range would be dropped, not written (JAX's default scatter mode)."""

    def add_at_labels(self, g: Any, labels: Any, values: Any) -> Any:
        K = g.shape[-1]
        v = jnp.broadcast_to(jnp.asarray(values, dtype=g.dtype), labels.shape)

        def add(row: Any, label: Any, value: Any) -> Any:
            return row.at[label].add(value, unique_indices=True)

        out = jax.vmap(add)(g.reshape(-1, K), labels.reshape(-1), v.reshape(-1))
        return out.reshape(g.shape)

    def logits(self, h: Any, weight: Any) -> Any:
        # a dot_general that contracts weight's axis 1 where it is: through a transpose,
        # XLA:CPU copies the V×H weight first (64 MiB more at the bench's linear size)
        return jax.lax.dot_general(h, weight, (((1,), (1,)), ((), ())))


class JaxFramework(Framework):
    name = "jax"
    native_kernel_class = JaxKernels

    def is_concrete(self, x: Any) -> bool:
        return not isinstance(x, jax.core.Tracer)

    def checks_at_run_time(self, x: Any) -> bool:
        # JAX has no run-time error under jit: only a checkify check, which every staged
        # caller must then functionalise (checkify.checkify), so it is opt-in.
        return _CHECKIFY[0]

    def check(self, ok: Any, message: str, lo: Any, hi: Any) -> None:
        from jax.experimental import checkify

        checkify.check(jnp.all(ok), message + "; found out-of-range values, e.g. {lo} and {hi}", lo=lo, hi=hi)

    def detached(self, value: Any) -> Any:
        return jax.lax.stop_gradient(jnp.asarray(value))

    def device(self, x: Any) -> Any:
        # None: new arrays are uncommitted and follow the arrays they meet, so a device
        # is never pinned inside a trace (sharded inputs, closed-over labels)
        return None

    @property
    def index_dtype(self) -> Any:
        return jnp.int64 if jax.config.jax_enable_x64 else jnp.int32


FW = JaxFramework(array_api_compat.array_namespace(jnp.zeros(0)))


def binding() -> JaxFramework:
    return FW
