"""The PyTorch binding's compiled kernels: the dense loss's forward and closed-form
backward, each compiled once by ``torch.compile`` (Inductor: C++/OpenMP loops on the
CPU, Triton on CUDA) from the core's own Array-API composition, with dynamic shapes
and the varying options (:data:`smoothloss._options.VARYING`) as graph inputs.

:func:`wanted` and :func:`warmed_up` decide whether an eager call runs them: never
below ``COMPILE_THRESHOLD`` logits, never on a signature's first calls under ``"auto"``
(see ``WARMUP_CALLS``), never where the C++ compiler is missing (checked before the
first compile).
"""

from __future__ import annotations

import functools
import os
import shutil
from dataclasses import replace
from typing import Any

import torch

from smoothloss import _core, _options
from smoothloss.backends._autodiff import Closed
from smoothloss.backends._base import Kernels, compile_failed, compile_mode, compile_wanted
from smoothloss.backends.torch import FW, TorchFramework, _label_values, plain

__all__ = ["COMPILED", "COMPILE_THRESHOLD", "CompiledClosed", "WARMUP_CALLS", "signature", "wanted", "warmed_up"]


# Dynamo's limit of recompiles per graph: each option set and dtype is a graph of its own,
# more than Dynamo's default of 8.
_RECOMPILE_LIMIT = 256


def _compile(fn: Any) -> Any:
    """``torch.compile`` of one kernel: dynamic shapes, one graph, Inductor's C++ loops
    parallel over rows whatever the thread count of the call that compiled them
    (``cpp.dynamic_threads``: with a fixed count, a graph compiled, or cached on disk, by
    a one-thread process runs serially in every later process).

    A recent ``torch.compile`` takes ``recompile_limit`` for this function alone; an
    older one (:data:`_OLD_DYNAMO`) has only Dynamo's global ``recompile_limit``, so there
    each call runs under a patch of that setting, and the user's own compiled functions
    keep theirs. (This and :func:`_tensor_values` are where torch versions differ here.)"""
    options = {"cpp.dynamic_threads": True}
    if not _OLD_DYNAMO:
        return torch.compile(fn, dynamic=True, fullgraph=True, recompile_limit=_RECOMPILE_LIMIT, options=options)
    from torch import _dynamo  # (``import torch._dynamo`` would make ``torch`` local here)

    graph = torch.compile(fn, dynamic=True, fullgraph=True, options=options)

    @functools.wraps(fn)
    def limited(*args: Any) -> Any:
        with _dynamo.config.patch(recompile_limit=_RECOMPILE_LIMIT):
            return graph(*args)

    return limited


def _old_dynamo() -> bool:
    import inspect

    return "recompile_limit" not in inspect.signature(torch.compile).parameters


# An older torch.compile (2.7 is one; 2.13 is not), told apart by its lack of the
# recompile_limit argument: besides that argument, it differs in how its Dynamo takes a
# Python float inside a graph's inputs (the varying options): it specialises the first
# value and, at the next, guards on the value again, so a smoothing schedule would
# compile a graph per value. There the floats go in as 0-d float64 tensors
# (:func:`_tensor_values`), as a user's tensor option does everywhere.
_OLD_DYNAMO = _old_dynamo()


def _tensor_values(values: tuple[Any, ...], device: Any) -> tuple[Any, ...]:
    """The varying options' Python numbers as 0-d float64 tensors on ``device`` (None and
    tensors as they are): a graph input Dynamo never specialises. Float64 holds the
    number exactly, and a 0-d tensor does not widen the logits' dtype."""
    return tuple(
        torch.tensor(v, dtype=torch.float64, device=device) if isinstance(v, (int, float)) else v for v in values
    )


# Eager calls on at least this many logits may run the compiled kernels under
# set_compile_mode("auto"): below it, a compiled call's fixed cost (guards, launch) is
# more than the passes it saves (the bench's compiled-vs-eager ladder; the ratios are in
# docs/benchmarks.md and the path table in docs/transforms.md).
COMPILE_THRESHOLD = int(os.environ.get("SMOOTHLOSS_COMPILE_THRESHOLD", 3 << 15))

# Under "auto", a call signature (device, dtype, target kind, weight, option constants)
# runs the eager kernels this many times before its compiled kernels are built: a
# one-off call (a notebook cell, a unit test, a short job) never pays a compile, a
# training loop pays it once, at the step after these.
WARMUP_CALLS = int(os.environ.get("SMOOTHLOSS_COMPILE_WARMUP", 8))


_LOG2_E = 1.4426950408889634


class _GraphKernels(Kernels):
    """The Array-API composition, but for two kernels Inductor compiles slower than it could:

    * the label term: Inductor fuses the composition's ``where(classes == label, g + v,
      g)`` into the gradient's loop as an integer compare and blend per logit, where an
      out-of-place ``scatter_add`` is a second, cheaper loop over the rows writing into
      the same buffer;
    * float32 ``exp`` on the CPU, which Inductor's C++ loops take from SLEEF's 1-ulp
      ``expf``, slower than torch's own ``exp``; ``exp2(z·log2 e)`` is faster than both.
      Rounding z·log2 e adds a relative error of about |z|·2⁻²⁴ to exp(z), z = x - max:
      at most 1.2e-6 for the terms above e⁻²⁰ of the largest, which are all that move a
      float32 sum or probability. Float64 (its rounding is 2⁻⁵³) and CUDA (Triton's exp
      is already exp2 of a product) keep ``exp``.
    """

    def exp(self, z: Any) -> Any:
        if z.dtype == torch.float32 and z.device.type == "cpu":
            return torch.exp2(z * _LOG2_E)
        return torch.exp(z)

    def add_at_labels(self, g: Any, labels: Any, values: Any) -> Any:
        return g.scatter_add(-1, labels.unsqueeze(-1), _label_values(g, labels, values))  # (out of place: traced)


class _ReferenceBinding(TorchFramework):
    """The binding whose kernels are the graph's, whatever the kernels switch: the
    Array-API composition (with the label term as a scatter) that Inductor fuses into
    one or two loops over the logits."""

    native_kernel_class = _GraphKernels

    @property
    def kernels(self) -> Kernels:
        return self.native


_REFERENCE = _ReferenceBinding(FW.xp)

# ignore_index=None as a value no (checked) label equals, so that it is no graph of its own
_NO_LABEL = -(2**63)


def _forward_graph(logits: Any, targets: Any, weight: Any, shape: _core.Options, values: tuple[Any, ...]) -> Any:
    return _core.forward(_REFERENCE, logits, targets, weight, _options.join(shape, values))


def _backward_graph(
    logits: Any, targets: Any, weight: Any, shape: _core.Options, values: tuple[Any, ...], *rest: Any
) -> Any:
    return _core.backward(_REFERENCE, logits, targets, weight, _options.join(shape, values), *rest)


def _forward_kept_graph(logits: Any, targets: Any, weight: Any, shape: _core.Options, values: tuple[Any, ...]) -> Any:
    """:func:`_forward_graph`, and ``e = exp(x - m)`` of the (N, K) logits: the one its
    row sums add up (so Inductor writes it from the same loop, with no second exp)."""
    keep: list[Any] = []
    loss, stats, scale = _core.forward(_REFERENCE, logits, targets, weight, _options.join(shape, values), keep=keep)
    return loss, stats, scale, keep[0]


def _exp_grad_graph(
    e: Any, targets: Any, weight: Any, shape: _core.Options, values: tuple[Any, ...], stats: Any, scale: Any,
    cotangent: Any,
) -> Any:
    """The logits' gradient made in e's place, but for the label term, returned as
    ``(labels, at_label)`` (a scatter into e inside the graph would make Inductor copy e)."""
    factor, shift, labels, at_label = _core.exp_grad_terms(
        _REFERENCE, e, targets, weight, _options.join(shape, values), stats, scale, cotangent
    )
    e.mul_(factor).sub_(shift)
    return labels, at_label


@functools.lru_cache(maxsize=256)
def _graph_options(opts: _core.Options, integer: bool) -> tuple[_core.Options, tuple[Any, ...]]:
    """A call's options split into the graph's constants and its inputs
    (:func:`smoothloss._options.split`; cached: two calls a step would otherwise rebuild
    the same dataclass), in the graphs' layout: the class axis last, an integer
    ``ignore_index`` always."""
    ignore = opts.ignore_index if opts.ignore_index is not None or not integer else _NO_LABEL
    return _options.split(replace(opts, axis=-1, ignore_index=ignore))


class _Flat:
    """A call in the compiled graphs' one layout: logits (N, K), targets (N,) or (N, K),
    an integer ``ignore_index`` always. So the rank, the class axis and the presence of
    an ignore_index make no graphs of their own; a weight does (a ones vector in its
    place would cost a load per logit and a gather per row in every unweighted call).
    Moving a class axis that is not last copies the logits; flattening the leading axes
    of class-last logits does not."""

    def __init__(self, logits: Any, targets: Any, weight: Any, opts: _core.Options) -> None:
        self.axis = opts.axis % logits.ndim
        self.last = self.axis == logits.ndim - 1
        x = logits if self.last else logits.movedim(self.axis, -1)
        self.positions, K = tuple(x.shape[:-1]), x.shape[-1]
        self.x = x.reshape(-1, K)
        self.integer = not targets.is_floating_point()
        if self.integer:
            self.t = targets.reshape(-1)
        else:
            self.t = (targets if self.last else targets.movedim(self.axis, -1)).reshape(-1, K)
        self.w = weight
        self.shape, self.values = _graph_options(opts, self.integer)
        if _OLD_DYNAMO:
            self.values = _tensor_values(self.values, self.x.device)
        self.none = opts.reduction == "none"

    def rows(self, a: Any) -> Any:
        """A per-position array (positions, ...) as (N, ...)."""
        return a.reshape(-1, *a.shape[len(self.positions):])

    def positioned(self, a: Any) -> Any:
        """A per-row array (N, ...) back to (positions, ...)."""
        return a.reshape(*self.positions, *a.shape[1:])

    def outputs(self, loss: Any, stats: Any) -> tuple[Any, Any]:
        """A graph's flat loss ("none": per row) and statistics back to (positions, ...)."""
        return (self.positioned(loss) if self.none else loss), self.positioned(stats)

    def cotangent(self, cot: Any) -> Any:
        """A loss's cotangent as the graphs take it: per row for "none", else as it is."""
        return self.rows(cot) if self.none and isinstance(cot, torch.Tensor) and cot.ndim else cot

    def layout(self, g: Any) -> Any:
        """An (N, K) gradient back to the caller's layout."""
        g = g.reshape(*self.positions, g.shape[-1])
        return g if self.last else g.movedim(-1, self.axis)


class CompiledClosed(Closed):
    """The dense loss's forward and closed-form backward, each compiled once by
    ``torch.compile`` (Inductor: C++/OpenMP loops on the CPU, Triton on CUDA) from the
    core's own Array-API composition, with dynamic shapes: every batch size and class
    count of one dtype and option set share one graph, and the smoothing and z-loss
    values are graph inputs. Where compiling fails (no C++ compiler, no Triton, an
    unsupported platform) it warns once per process and the eager kernels run."""

    compiled = True

    def __init__(self) -> None:
        super().__init__(FW)  # (the facts of each chunk's step, and of the eager fallback)
        self.graphs: dict[str, Any] = {}
        self.broken: str | None = None
        self.cxx_checked = False  # whether the C++ compiler was looked up (once, on the first CPU call)
        self.calls = 0  # compiled calls made (the tests read it to know which path ran)

    def graph(self, name: str, fn: Any) -> Any:
        graph = self.graphs.get(name)
        if graph is None:
            # dynamic_threads: Inductor's C++ loops parallel over rows whatever the thread
            # count, and the sizes, of the call that compiled them (with a fixed count,
            # a graph compiled, or cached on disk, by a one-thread process runs serially
            # in every later process)
            # (each option set and dtype is a graph of its own: more than Dynamo's default 8)
            graph = self.graphs[name] = _compile(fn)
        return graph

    def _run(self, name: str, fn: Any, *args: Any) -> Any:
        """The compiled ``fn`` of ``args``, or None where compiling failed (then the
        caller runs the eager kernels)."""
        if self.broken is None and not self.cxx_checked and args[0].device.type == "cpu":
            self.cxx_checked = True
            if _cpp_compiler() is None:  # found out before compiling, not by a failed build
                self.broken = compile_failed("torch.compile", RuntimeError(
                    "no C++ compiler found (Inductor's CPU kernels need one: looked for $CXX and "
                    f"{', '.join(str(c) for c in _cxx_search() if c)})"
                ))
        if self.broken is None:
            try:
                out = self.graph(name, fn)(*args)
                self.calls += 1
                return out
            except torch.OutOfMemoryError:
                raise  # the device is full: not a compiler failure, and eager kernels need no less
            except Exception as e:  # noqa: BLE001 (whatever the compiler raised: fall back, once)
                # (Dynamo wraps the backend's error)
                self.broken = compile_failed("torch.compile", getattr(e, "inner_exception", None) or e)
        return None

    def forward(self, logits: Any, targets: Any, weight: Any, opts: _core.Options) -> Any:
        f = _Flat(logits, targets, weight, opts)
        out = self._run("forward", _forward_graph, f.x, f.t, f.w, f.shape, f.values)
        if out is None:
            return super().forward(logits, targets, weight, opts)
        loss, stats, scale = out
        return (*f.outputs(loss, stats), scale)

    def forward_kept(self, f: _Flat) -> Any:
        """``(loss, stats, scale, e)``: the compiled forward of a flattened call, and
        ``e = exp(x - m)`` of its (N, K) logits; Nones where compiling failed."""
        out = self._run("forward_kept", _forward_kept_graph, f.x, f.t, f.w, f.shape, f.values)
        if out is None:
            return None, None, None, None
        loss, stats, scale, e = out
        return (*f.outputs(loss, stats), scale, e)

    def grad_from_exp(self, f: _Flat, e: Any, stats: Any, scale: Any, cotangent: Any) -> Any:
        """The logits' gradient of a flattened call, made in the place of the forward's
        ``e`` (:meth:`forward_kept`), in the caller's layout; None where compiling
        failed (e is then unchanged)."""
        out = self._run(
            "backward_from_exp", _exp_grad_graph, e, f.t, f.w, f.shape, f.values, f.rows(stats), scale,
            f.cotangent(cotangent),
        )
        if out is None:
            return None
        labels, at_label = out
        # the label term out of the graph: a scatter into e there would make Inductor copy e
        e.scatter_add_(-1, labels.unsqueeze(-1), _label_values(e, labels, at_label))
        return f.layout(e)

    def forward_and_grad(self, logits: Any, targets: Any, weight: Any, opts: _core.Options) -> Any:
        if self.broken is None and self.keeps_exp(logits, targets, opts):
            f = _Flat(logits, targets, weight, opts)
            loss, stats, scale, e = self.forward_kept(f)
            if e is not None:
                one = torch.ones((), dtype=e.dtype, device=e.device)  # (a tensor: the same graph as a backward's)
                g = self.grad_from_exp(f, e, stats, scale, one)
                if g is not None:
                    return loss, g
        return super().forward_and_grad(logits, targets, weight, opts)

    def backward(
        self, logits: Any, targets: Any, weight: Any, opts: _core.Options,
        stats: Any, scale: Any, loss: Any, cotangent: Any, needs: tuple[bool, bool, bool] = (True, False, False),
    ) -> Any:
        f = _Flat(logits, targets, weight, opts)
        flat_loss = loss if loss is None or not f.none else f.rows(loss)  # (the chunked linear loss's step has none)
        out = self._run(
            "backward", _backward_graph, f.x, f.t, f.w, f.shape, f.values, f.rows(stats), scale, flat_loss,
            f.cotangent(cotangent), needs,
        )
        if out is None:
            return super().backward(logits, targets, weight, opts, stats, scale, loss, cotangent, needs)
        g_logits, g_targets, g_weight = out
        return (
            None if g_logits is None else f.layout(g_logits),
            None if g_targets is None else f.layout(g_targets),
            g_weight,
        )


def _cxx_search() -> tuple[Any, ...]:
    """The C++ compilers Inductor looks for on the CPU (its ``cpp.cxx`` setting)."""
    try:
        from torch._inductor import config
    except ImportError:  # (a torch without Inductor's config here: nothing to look for)
        return ()
    cxx = config.cpp.cxx
    return tuple(cxx) if isinstance(cxx, (list, tuple)) else (cxx,)


def _cpp_compiler() -> str | None:
    """The first C++ compiler of ``$CXX`` and Inductor's search list found on the PATH,
    or None; "unknown" where Inductor's setting cannot be read (assume one)."""
    search = _cxx_search()
    if not search:
        return "unknown"
    for name in (os.environ.get("CXX"), *search):
        if name and shutil.which(str(name)):
            return str(name)
    return None


COMPILED = CompiledClosed()

#: The functions whose compiled graphs the closed form runs (Dynamo keeps one cache entry
#: per graph of each; the tests count them).
GRAPH_FUNCTIONS = (_forward_graph, _backward_graph, _forward_kept_graph, _exp_grad_graph)


def wanted(like: Any, numel: Any) -> bool:
    """Whether an eager call on ``numel`` logits of ``like``'s kind (outside
    torch.compile) may run the compiled kernels: by the compile mode and the size
    threshold (under ``"auto"``, :func:`warmed_up` decides then)."""
    if COMPILED.broken is not None or torch.compiler.is_compiling():
        return False  # in a caller's compiled region: traced inline (no guard on the size or the mode)
    if not compile_wanted(numel, COMPILE_THRESHOLD):
        return False
    if not plain(like) or like.device.type not in ("cpu", "cuda"):
        return False  # meta, fake and subclass tensors: the eager path traces them
    return not (torch.jit.is_tracing() or torch.jit.is_scripting())


def warmed_up(signature: Any) -> bool:
    """Whether a call ``signature`` (:func:`signature`) has run eagerly
    ``WARMUP_CALLS`` times (always, under compile mode ``"always"``); counts this call."""
    if compile_mode() == "always":
        return True
    seen = _SEEN.get(signature, 0)
    if seen >= WARMUP_CALLS:
        return True
    if len(_SEEN) >= 4096:  # (a process rarely sees more than a handful)
        _SEEN.clear()
    _SEEN[signature] = seen + 1
    return False


# Eager calls made so far by call signature, under "auto" (see WARMUP_CALLS)
_SEEN: dict[Any, int] = {}


def signature(like: Any, targets: Any, weight: Any, opts: _core.Options, chunked: bool = False) -> Any:
    """What decides a call's compiled graphs: the device and dtypes, the target kind, a
    weight or none, and the options' graph constants (a schedule's values share one)."""
    integer = targets is None or not targets.is_floating_point()
    return (like.device.type, like.dtype, integer, weight is None, _graph_options(opts, integer)[0], chunked)
