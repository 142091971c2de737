"""What every framework binding's facts are: the namespace, the value and device
lookups, the index dtype, and the kernels (the Array-API composition here, the native
ones in each framework's module). :class:`Framework` holds the facts of NumPy and
array-api-strict; torch, JAX and TensorFlow subclass it in their own modules.

A binding is a leaf: it never imports the algorithm (``_core``, ``_linear``,
``_vocab_parallel``), which takes it as an argument. The losses' entry points, with
their autodiff and their choice of path, are one layer up (``_autodiff`` and each
framework's ``*_autodiff`` module). Imports no framework.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
import threading
import warnings
from typing import Any, Iterator

import array_api_compat

from smoothloss._formulas import shifted_nll

__all__ = [
    "COMPILE_MODES", "Framework", "Kernels", "before_first_block", "compile_failed", "compile_mode", "compile_wanted",
    "native_kernels", "native_kernels_everywhere", "set_compile_mode", "use_native_kernels",
]

_NATIVE = contextvars.ContextVar("smoothloss_native_kernels", default=True)

COMPILE_MODES = ("auto", "always", "never")


def _checked_mode(mode: Any, source: str) -> str:
    if mode not in COMPILE_MODES:
        raise ValueError(f"{source} must be one of {', '.join(map(repr, COMPILE_MODES))}, got {mode!r}")
    return mode


_COMPILE = {"mode": os.environ.get("SMOOTHLOSS_COMPILE", "auto")}


def set_compile_mode(mode: str) -> str:
    """Choose when smoothloss hands its closed-form kernels to the framework's compiler
    (PyTorch Inductor); returns the mode that was in force, so it can be restored.

    * ``"auto"`` (the default): eager calls on inputs large enough for compiling to pay
      (the threshold the benchmark measures) run compiled kernels; smaller ones, and
      calls inside ``torch.func`` transforms, run the eager kernels.
    * ``"always"``: every eager call the compiled kernels can serve runs them.
    * ``"never"``: no compiling; the eager kernels only.

    The environment variable ``SMOOTHLOSS_COMPILE`` sets the mode a process starts with.
    Calls inside a caller's own ``torch.compile`` region are traced into the caller's
    graph whatever the mode.

    Example:
        >>> import smoothloss
        >>> previous = smoothloss.set_compile_mode("never")
        >>> smoothloss.compile_mode()
        'never'
        >>> _ = smoothloss.set_compile_mode(previous)
    """
    previous = compile_mode()
    _COMPILE["mode"] = _checked_mode(mode, "the compile mode")
    return previous


def compile_mode() -> str:
    """The compile mode in force (see :func:`set_compile_mode`)."""
    return _checked_mode(_COMPILE["mode"], "the environment variable SMOOTHLOSS_COMPILE")


def compile_wanted(numel: int | None, threshold: int) -> bool:
    """Whether the mode in force compiles a call on ``numel`` logits (None: not known
    while tracing), given the framework's measured ``threshold``."""
    mode = compile_mode()
    if mode == "never":
        return False
    return mode == "always" or (numel is not None and numel >= threshold)


def compile_failed(compiler: str, error: BaseException) -> str:
    """Warn (once per process and compiler: the caller keeps the text returned and stops
    compiling) that ``compiler`` failed with ``error``; returns a one-line description."""
    first = str(error).strip().splitlines()
    broken = f"{type(error).__name__}: {first[0] if first else ''}"
    warnings.warn(
        f"smoothloss could not compile its kernels with {compiler} ({broken}); the eager kernels run "
        "instead for the rest of this process. To skip compiling, call "
        'smoothloss.set_compile_mode("never") or set SMOOTHLOSS_COMPILE=never.',
        RuntimeWarning,
        stacklevel=4,
    )
    return broken


@contextlib.contextmanager
def native_kernels(enabled: bool) -> Iterator[None]:
    """Use (or not) the framework-native kernels inside the block, in this thread or
    task only (a :class:`contextvars.ContextVar`). A traced function keeps the choice
    that was in force when it was traced."""
    while _BEFORE_FIRST_BLOCK:  # (a binding's one-time set-up for reading the switch in a trace)
        _BEFORE_FIRST_BLOCK.pop()()
    token = _NATIVE.set(bool(enabled))
    with _OPEN_LOCK:
        _OPEN[0] += 1
    try:
        yield
    finally:
        with _OPEN_LOCK:
            _OPEN[0] -= 1
        _NATIVE.reset(token)


def use_native_kernels() -> bool:
    """Whether the framework-native kernels are in use here (see :func:`native_kernels`)."""
    return _NATIVE.get()


def native_kernels_everywhere() -> bool:
    """True while no :func:`native_kernels` block is open in any thread: every caller
    then uses the native kernels, with no need to read the switch (which a compiler's
    tracer may not be able to read)."""
    return _OPEN[0] == 0


@contextlib.contextmanager
def without_run_time_checks() -> Iterator[None]:
    """Trace without the run-time checks of :meth:`Framework.check` (labels, array
    options) inside the block, process-wide: the bench's way to measure what they cost.
    A function traced inside it keeps no checks; a ``torch.compile`` guard on the switch
    compiles again outside it."""
    _RUN_TIME_CHECKS[0] = False
    try:
        yield
    finally:
        _RUN_TIME_CHECKS[0] = True


_RUN_TIME_CHECKS = [True]


def before_first_block(fn: Any) -> None:
    """Run ``fn()`` once, before the first :func:`native_kernels` block opens (a
    binding's set-up for reading the switch inside traced code)."""
    _BEFORE_FIRST_BLOCK.append(fn)


# the number of native_kernels blocks open in any thread, and the set-ups still to run
_OPEN = [0]
_OPEN_LOCK = threading.Lock()
_BEFORE_FIRST_BLOCK: list[Any] = []


class Kernels:
    """The core's hot-path kernels as Array-API compositions (the reference).

    * ``log_softmax_stats(x, weight, sum_w, labels)``: ``(m, lse_rel, sum_nll, nll_y)``
      over the last axis: each row's maximum m, ``lse_rel = log Σ_c exp(x_c - m)`` (so the
      log-sum-exp is m + lse_rel, never formed: its rounding at a large offset would be
      the loss's error); given ``sum_w = Σ_c w_c`` (K without a weight),
      ``sum_nll = Σ_c w_c (lse - x_c)`` (w = 1 without a weight; None when ``sum_w`` is
      None); given integer ``labels`` in [0, K), ``nll_y = lse - x_y`` at each row's label
      as ``lse_rel + (m - x_y)`` (None without labels). With ``stats=False`` the caller
      needs m and lse_rel only as ``softmax_affine``'s ``stats`` of the same x: a native
      kernel may return in their place whatever its own ``softmax_affine`` reads instead
      (torch's row kernels: None and the log-probabilities, which it exponentiates).
      This composition (not the native kernels) also appends ``exp(x - m)`` to a list
      ``keep`` where one is given (:func:`smoothloss._core.forward`'s ``keep``).
    * ``softmax_affine(x, stats, scale, shift, row_lse=True)``: scale·softmax(x) - shift
      with ``softmax = exp((x - m) - lse_rel)``, ``stats = (m, lse_rel)`` per position (the
      row's own unless ``row_lse=False``: then they may be a whole sharded row's),
      ``scale`` per position (…, 1) or a float, ``shift`` anything that broadcasts against x.
    * ``add_at_labels(g, labels, values)``: g with ``values`` (per position) added at
      each position's label. Native versions may write into ``g`` (always a fresh array).
    * ``affine(g, scale, shift)``: ``g·scale - shift``. Native versions may write into
      ``g`` (a fresh array).
    * ``add_scaled(a, b, c)``: ``a + b·c`` for arrays a, b (same dtype) and a Python number c.
    * ``add_matmul(acc, a, b)``: ``acc + a.T @ b`` for 2-D a, in ``acc``'s dtype: the
      chunked linear loss's weight gradient. Native versions may write into ``acc``.
    * ``logits(h, weight)``: ``h @ weight.T``, the chunked linear loss's logits of rows
      ``h`` (C, H) and a projection (V, H), in a layout of the binding's choice.
    * ``block_max(z, block)``: each row's maximum over each ``block`` consecutive classes
      of ``z`` (C, V), V a multiple of ``block``: (C, V/block), read in ``logits``'s layout.

    ``overwrites``: whether the kernels work in place where the caller allows it: then
    ``log_softmax_stats`` takes ``scratch=True`` with ``keep`` (x may be overwritten: the
    exponentials it keeps are made in x's place). ``small_chunks(like)``: whether the
    chunked linear loss defaults to its small chunk for arrays like ``like``.

    The two above that exponentiate do it through ``exp(z)``, ``z <= 0`` (``xp.exp``):
    the one place a compiler's binding picks a faster formulation.
    """

    overwrites = False

    def __init__(self, fw: "Framework") -> None:
        self.fw = fw
        self.xp = fw.xp

    def exp(self, z: Any) -> Any:
        return self.xp.exp(z)

    def log_softmax_stats(
        self, x: Any, weight: Any = None, sum_w: Any = None, labels: Any = None, *, stats: bool = True,
        keep: list[Any] | None = None,
    ) -> tuple[Any, Any, Any, Any]:
        xp = self.xp
        m = xp.max(x, axis=-1, keepdims=True)
        z = x - m  # <= 0: the sums below add terms of one sign, with no cancellation
        e = self.exp(z)
        if keep is not None:
            keep.append(e)
        lse_rel = xp.log(xp.sum(e, axis=-1))
        sum_nll = nll_y = None
        if sum_w is not None:
            sum_nll = lse_rel * sum_w - xp.sum(z if weight is None else z * weight, axis=-1)
        m = m[..., 0]
        if labels is not None:
            x_y = xp.take_along_axis(x, xp.expand_dims(labels, axis=-1), axis=-1)[..., 0]
            nll_y = shifted_nll(m, lse_rel, x_y)
        return m, lse_rel, sum_nll, nll_y

    def softmax_affine(self, x: Any, stats: Any, scale: Any, shift: Any, *, row_lse: bool = True) -> Any:
        xp = self.xp
        m, lse_rel = stats
        g = self.exp((x - xp.expand_dims(m, axis=-1)) - xp.expand_dims(lse_rel, axis=-1))
        return self.affine(g, scale, shift)

    def add_at_labels(self, g: Any, labels: Any, values: Any) -> Any:
        xp = self.xp
        # (the run-time class count where a graph was traced with an unknown class axis)
        classes = xp.arange(self.fw.dynamic_shape(g)[-1], dtype=labels.dtype, device=self.fw.device(labels))
        hit = xp.expand_dims(labels, axis=-1) == classes
        v = xp.expand_dims(values, axis=-1) if not isinstance(values, float) and values.ndim else values
        return xp.where(hit, g + v, g)

    def affine(self, g: Any, scale: Any, shift: Any) -> Any:
        return _affine(g, scale, shift)

    def add_scaled(self, a: Any, b: Any, c: Any) -> Any:
        return a + b * c

    def logits(self, h: Any, weight: Any) -> Any:
        return self.xp.matmul(h, self.xp.moveaxis(weight, 0, 1))

    def block_max(self, z: Any, block: int) -> Any:
        return self.xp.max(self.xp.reshape(z, (-1, int(z.shape[-1]) // block, block)), axis=-1)

    def small_chunks(self, like: Any) -> bool:
        return self.overwrites

    def add_matmul(self, acc: Any, a: Any, b: Any) -> Any:
        xp = self.xp
        ab = xp.matmul(xp.moveaxis(a, 0, 1), b)
        return acc + (ab if ab.dtype == acc.dtype else xp.astype(ab, acc.dtype))


def _numel(x: Any) -> Any:
    """The number of elements of ``x`` (symbolic while torch traces); None where a
    dimension is unknown (a TensorFlow graph)."""
    shape = tuple(x.shape)
    return None if None in shape else math.prod(shape)


def _affine(g: Any, scale: Any, shift: Any) -> Any:
    """``g·scale - shift``, skipping a multiplication by 1 and a subtraction of 0."""
    if not isinstance(scale, float) or scale != 1.0:
        g = g * scale
    if not isinstance(shift, float) or shift != 0.0:
        g = g - shift
    return g


_UNKNOWN = object()


def _integer_range(xp: Any, dtype: Any) -> tuple[int, int]:
    info = xp.iinfo(dtype)
    return int(info.min), int(info.max)


class Framework:
    """One framework's facts and kernels. This base serves NumPy and array-api-strict."""

    name = "array-api"
    native_kernel_class = Kernels

    def __init__(self, xp: Any, name: str | None = None) -> None:
        self.xp = xp
        if name is not None:
            self.name = name
        self.reference = Kernels(self)
        self.native = self.native_kernel_class(self)
        self._dtype_facts: dict[tuple[Any, Any], Any] = {}

    def __repr__(self) -> str:
        return f"<smoothloss binding for {self.name}>"

    # ------------------------------------------------------------------ arrays
    @property
    def kernels(self) -> Kernels:
        """The native kernels, or the Array-API composition inside ``native_kernels(False)``."""
        return self.native if _NATIVE.get() else self.reference

    def is_concrete(self, x: Any) -> bool:
        """Whether ``x``'s values can be read now without a host sync or an error."""
        return True

    def dtype_fact(self, fact: Any, dtype: Any) -> Any:
        """``fact(xp, dtype)``, kept per fact and dtype where :meth:`cacheable` (the
        namespaces' dtype inspection is Python, microseconds a call)."""
        if not self.cacheable():
            return fact(self.xp, dtype)
        key = (fact, dtype)
        try:
            value = self._dtype_facts.get(key, _UNKNOWN)
        except TypeError:  # a dtype that cannot be hashed
            return fact(self.xp, dtype)
        if value is _UNKNOWN:
            value = self._dtype_facts[key] = fact(self.xp, dtype)
        return value

    def cacheable(self) -> bool:
        """Whether results computed from arrays' dtypes, shapes and options may be kept
        across calls (not while a compiler traces this Python code, which cannot be
        told that a cache lookup has no side effects)."""
        return True

    def is_graph(self, x: Any) -> bool:
        """Whether ``x`` belongs to a graph being built (its loops must be graph loops)."""
        return False

    def device(self, x: Any) -> Any:
        """The device new arrays next to ``x`` go on."""
        return array_api_compat.device(x)

    def dynamic_shape(self, x: Any) -> Any:
        """``x``'s shape for ``reshape`` (a run-time shape where an axis is unknown)."""
        return tuple(x.shape)

    @property
    def index_dtype(self) -> Any:
        """The integer dtype labels are widened to before any comparison or gather."""
        return self.xp.int64

    def holds_index(self, value: int) -> bool:
        """Whether ``value`` fits the index dtype (else no label can equal it)."""
        lo, hi = self.dtype_fact(_integer_range, self.index_dtype)  # (JAX's index dtype may change)
        return lo <= value <= hi

    def bounds(self, y: Any) -> tuple[int | None, int | None]:
        """``(min, max)`` of a non-empty integer array as Python ints, or ``(None, None)``
        where they cannot be read now (staged inside a trace)."""
        lo, hi = self.xp.min(y), self.xp.max(y)
        if not self.is_concrete(lo):
            return None, None
        return int(lo), int(hi)

    def checks_at_run_time(self, x: Any) -> bool:
        """Whether :meth:`check` can check values of ``x`` that cannot be read now (a
        graph, a traced call) when they are computed. The base cannot: NumPy and
        array-api-strict values are always read."""
        return False

    def run_time_checked(self, x: Any) -> bool:
        """Whether to check ``x``'s values at run time: where :meth:`checks_at_run_time`,
        outside :func:`without_run_time_checks`."""
        return _RUN_TIME_CHECKS[0] and self.checks_at_run_time(x)

    def check(self, ok: Any, message: str, lo: Any, hi: Any) -> None:
        """The framework's own run-time check that every entry of the boolean array
        ``ok`` holds, failing with ``message`` (the rule broken) and, where the framework
        can print them, the out-of-range values ``lo`` and ``hi`` (a graph assertion, a device-side assert, a
        checkify check). Called only where :meth:`checks_at_run_time`."""
        raise NotImplementedError

    def detached(self, value: Any) -> Any:
        """``value`` as an array of this namespace that no gradient flows through (an
        option's value, not an input of the loss's derivative)."""
        return self.xp.asarray(value)

    def read_scalar(self, value: Any) -> float | None:
        """A 0-d array option's value as a Python float where it can be read now without
        a device sync, else None (it is then checked at run time where it can be)."""
        return float(value) if self.is_concrete(value) else None

    def index(self, labels: Any) -> Any:
        """Integer labels in the index dtype (narrow dtypes would wrap at K). An unsigned
        label too large for the index dtype (uint64 ≥ 2⁶³) wraps to a negative value in
        the cast: it becomes the index dtype's maximum instead, out of range for any K
        and equal to no ``ignore_index`` a label dtype of the user's could mean."""
        xp, dtype = self.xp, self.index_dtype
        if labels.dtype == dtype:
            return labels
        y = xp.astype(labels, dtype)
        if xp.isdtype(labels.dtype, "unsigned integer") and xp.iinfo(labels.dtype).bits >= xp.iinfo(dtype).bits:
            y = xp.where(y < 0, xp.iinfo(dtype).max, y)
        return y
