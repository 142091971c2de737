"""The option set of every cross-entropy, declared once.

Each option is one field of :class:`Options`: its name, default, check and one-line doc.
Everything that lists the options is derived from this declaration: the checks
(:meth:`Options.checked`), the per-combination cache key of the static checks
(:func:`key`), the values that compiled graphs take as inputs (:data:`VARYING`), the
adapters' configs and reprs (:func:`non_defaults`) and the docs' option table
(:func:`markdown_table`). Public functions keep their explicit keywords (users read
them) and hand them on with :func:`of`; a test checks that their defaults are these.

Adding an option: a field here, its maths in :mod:`smoothloss._formulas` and
:mod:`smoothloss._core`, its kernels, and the keyword in the public signatures.

Imports nothing from smoothloss and no framework.
"""

from __future__ import annotations

import functools
import math
import numbers
from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable, Mapping

__all__ = [
    "CONVENTIONS", "NAMES", "Options", "RANGES", "REDUCTIONS", "VARYING", "arrays", "check_choice",
    "check_nonnegative", "check_smoothing", "check_softcap", "defaults", "is_array_scalar", "is_int_scalar",
    "is_real_scalar", "key", "markdown_table", "join", "non_defaults", "attributes", "given", "of", "split",
]

REDUCTIONS = ("mean", "sum", "none")
CONVENTIONS = ("uniform", "others")


# ---------------------------------------------------------------------- scalar checks
def is_real_scalar(value: Any) -> bool:
    """A Python or NumPy real scalar (``np.float32(0.1)``, ``np.int64(3)``), never a bool
    or an array (only the varying options take arrays: :func:`is_array_scalar`)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and type(value).__name__ != "bool_"


def is_int_scalar(value: Any) -> bool:
    """A Python or NumPy integer scalar, never a bool or an array."""
    return isinstance(value, numbers.Integral) and is_real_scalar(value)


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"unknown {name} {value!r}; expected one of {list(choices)}")
    return value


def is_array_scalar(value: Any) -> bool:
    """A 0-d array of a framework (a tensor, a ``tf.Variable``, a tracer, a 0-d NumPy
    array): a value a varying option (:data:`VARYING`) may take, so that a schedule
    changes it without a new trace."""
    if is_real_scalar(value) or isinstance(value, (str, bytes)):
        return False
    shape = getattr(value, "shape", None)
    if shape is None:
        return False
    try:
        return len(tuple(shape)) == 0
    except (TypeError, ValueError):  # (a TensorFlow shape of unknown rank)
        return False


# The ranges of the numeric options: each predicate holds for a Python float, and
# elementwise for an array (so the checks of 0-d array values use the same rule), and
# fails for NaN.
def _unit(v: Any) -> Any:
    return (v >= 0.0) & (v <= 1.0)


def _nonnegative(v: Any) -> Any:
    return (v >= 0.0) & (v < math.inf)


def _positive(v: Any) -> Any:
    return (v > 0.0) & (v < math.inf)


RANGES: dict[str, tuple[Callable[[Any], Any], str]] = {
    "label_smoothing": (_unit, "must lie in [0, 1]"),
    "z_loss": (_nonnegative, "must be a finite number >= 0"),
    "softcap": (_positive, "must be None or a finite number > 0"),
}


def _check_number(value: Any, name: str, rule: str, kind: str) -> float:
    """``value`` as a Python float, checked against ``RANGES[rule]`` (TypeError for a
    non-number, ValueError out of range; traceable by torch.compile)."""
    if not is_real_scalar(value):
        raise TypeError(f"{name} must be {kind}, got {type(value).__name__}")
    value = float(value)
    within, message = RANGES[rule]
    if not within(value):
        raise ValueError(f"{name} {message}, got {value}")
    return value


def check_smoothing(value: Any, name: str = "label_smoothing") -> float:
    return _check_number(value, name, "label_smoothing", "a Python float in [0, 1]")


def check_nonnegative(value: Any, name: str) -> float:
    return _check_number(value, name, "z_loss", "a Python float")


def check_softcap(value: Any, name: str = "softcap") -> float | None:
    return None if value is None else _check_number(value, name, "softcap", "None or a Python float > 0")


def _varying(scalar_check: Callable[[Any, str], Any]) -> Callable[[Any, str], Any]:
    """A varying option's check: a number as ``scalar_check`` checks it, or a 0-d
    floating array as it is (its range is checked by the core, which knows its
    framework: on the host where the value can be read, else at run time)."""

    def check(value: Any, name: str) -> Any:
        if not is_array_scalar(value):
            return scalar_check(value, name)
        if "float" not in str(getattr(value, "dtype", "")):
            raise TypeError(f"{name} must be a float or a 0-d floating array, got an array of dtype {value.dtype}")
        return value

    return check


def _check_axis(value: Any, name: str) -> int:
    if not is_int_scalar(value):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    return int(value)


def _check_ignore_index(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if not is_int_scalar(value):
        raise TypeError(f"{name} must be None or an int, got {type(value).__name__}")
    return int(value)


def _check_convention(value: Any, name: str) -> str:
    return check_choice(name, value, CONVENTIONS)


def _check_reduction(value: Any, name: str) -> str:
    return check_choice(name, value, REDUCTIONS)


def _check_kl(value: Any, name: str) -> bool:
    return bool(value)


# ---------------------------------------------------------------------- the declaration
def _option(default: Any, check: Callable[[Any, str], Any], doc: str, *, varying: bool = False) -> Any:
    """A declared option: ``check(value, name)`` returns the normalised value or raises;
    ``varying`` marks a number that may change from step to step (a schedule), which
    every compiled graph takes as an input rather than as a constant."""
    return field(default=default, metadata={"check": check, "doc": doc, "varying": varying})


@dataclass(frozen=True)
class Options:
    """Validated, hashable options of one cross-entropy call (static under jit).

    ``axis`` is the class axis (normalised to be non-negative by the caller that knows
    the logits' rank; -1 where the class axis is last by construction, as in the chunked
    and vocab-parallel losses).
    """

    axis: int = _option(-1, _check_axis, "the class axis of the logits")
    label_smoothing: Any = _option(
        0.0, _varying(check_smoothing), "ε in [0, 1], the target mass spread over the classes", varying=True
    )
    convention: str = _option(
        "uniform", _check_convention, '"uniform": ε/K to every class; "others": ε/(K-1) to every non-target class'
    )
    ignore_index: int | None = _option(
        None, _check_ignore_index, "a label whose positions contribute 0 and leave the mean's denominator"
    )
    reduction: str = _option("mean", _check_reduction, '"mean", "sum" or "none"')
    z_loss: Any = _option(
        0.0, _varying(check_nonnegative), "coefficient of lse² per valid position (PaLM, t5x)", varying=True
    )
    softcap: Any = _option(
        None, _varying(check_softcap), "logits ← softcap·tanh(logits/softcap) first (Gemma 2)", varying=True
    )
    kl: bool = _option(False, _check_kl, "subtract the entropy of the smoothed target, so the minimum is 0 (t5x)")

    @classmethod
    def checked(cls, **given: Any) -> "Options":
        """The options ``given`` (any subset of the declared names; the rest take their
        defaults), each checked by its declared check. An unknown name is a TypeError.
        The varying options may be 0-d arrays (:func:`is_array_scalar`), but for the
        smoothing of ``kl=True``, whose target entropy is computed in Python."""
        unknown = set(given) - set(NAMES)
        if unknown:
            raise TypeError(f"unknown option(s) {sorted(unknown)}; the options are {list(NAMES)}")
        opts = cls(**{name: check(given[name], name) for name, check in _CHECKS if name in given})
        if opts.kl and is_array_scalar(opts.label_smoothing):
            raise TypeError("kl=True needs label_smoothing as a Python float (the target's entropy is computed from it)")
        return opts


NAMES: tuple[str, ...] = tuple(f.name for f in fields(Options))
# (name, check) per option, read once: torch.compile cannot trace dataclasses.fields
_CHECKS = tuple((f.name, f.metadata["check"]) for f in fields(Options))
VARYING: tuple[str, ...] = tuple(f.name for f in fields(Options) if f.metadata["varying"])
_DEFAULTS = {f.name: f.default for f in fields(Options)}


def defaults() -> dict[str, Any]:
    """Every option's default, by name."""
    return dict(_DEFAULTS)


def of(namespace: Mapping[str, Any], *, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """The declared options among ``namespace``'s names, as keyword arguments to hand on."""
    return {name: namespace[name] for name in NAMES if name in namespace and name not in exclude}


def attributes(obj: Any) -> dict[str, Any]:
    """The declared options among ``obj``'s attributes (a loss module's), in the
    declaration's order; ``getattr``, which Dynamo traces, not ``vars``, which it does
    not before torch 2.8."""
    return {name: getattr(obj, name) for name in NAMES if hasattr(obj, name)}


def given(**values: Any) -> dict[str, Any]:
    """The options a public function was called with, named one by one
    (``given(label_smoothing=label_smoothing, ...)``), as keyword arguments to hand on, in
    the declaration's order. A function that torch.compile may trace names them so rather
    than handing on ``locals()``, which Dynamo before torch 2.8 cannot trace; the
    declaration stays their owner: tests/test_options.py checks that each call names
    exactly its function's declared option parameters."""
    return {name: values[name] for name in NAMES if name in values}


def arrays(given: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(given, arrays)``: the varying options among ``given`` whose values are 0-d
    arrays, checked as :meth:`Options.checked` checks them, taken out of ``given`` and
    replaced by a number in their range, so that the checks of everything else (and
    their cache) do not depend on the arrays' values."""
    found = {name: given[name] for name in VARYING if name in given and is_array_scalar(given[name])}
    if not found:
        return dict(given), found
    Options.checked(**{**given, **found})  # (the arrays' dtypes, and kl with an array ε)
    return {**given, **dict.fromkeys(found, 1.0)}, found


def key(given: Mapping[str, Any]) -> tuple[Any, ...]:
    """The options ``given`` (unchecked) as a hashable key, in the declaration's order,
    with each value's type (``True == 1 == 1.0``, but a bool is not a valid number)."""
    values = tuple(given.get(name, default) for name, default in _DEFAULTS.items())
    return values, tuple(map(type, values))


def non_defaults(values: Mapping[str, Any], *, drop_in: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The declared options among ``values`` that differ from their default (for a
    ``repr``); ``drop_in`` names the defaults a drop-in takes from its original instead
    (torch's ``ignore_index=-100``)."""
    base = {**_DEFAULTS, **(drop_in or {})}
    return {name: values[name] for name in NAMES if name in values and values[name] != base[name]}


def split(opts: Options) -> tuple[Options, tuple[Any, ...]]:
    """:func:`_split`, cached per options (a step would otherwise rebuild the same
    dataclass); options holding an unhashable array (a TensorFlow tensor) are split anew."""
    try:
        return _split_cached(opts)
    except TypeError:
        return _split(opts)


def _split(opts: Options) -> tuple[Options, tuple[Any, ...]]:
    """``(constants, inputs)``: ``opts`` as a compiled graph takes them. ``inputs`` holds,
    for each :data:`VARYING` option in order, its value where the graph takes it as an
    input, else None; ``constants`` holds everything else, with a placeholder where the
    value is an input, so that every value of a schedule shares one graph (and one
    cache key). An option at its zero (ε = 0, z = 0, no softcap) stays a constant: its
    term is then left out of the graph, which a zero and a non-zero value cannot share.
    With ``kl`` the smoothing stays a constant too: the target's entropy is computed
    from it in Python. Equal constants are one object (a ``tf.function`` tells Python
    arguments apart by identity)."""
    inputs = []
    placeholders = {}
    for name in VARYING:
        value = getattr(opts, name)
        if value is None or (not is_array_scalar(value) and value == 0) or (name == "label_smoothing" and opts.kl):
            inputs.append(None)
        else:
            inputs.append(value)
            placeholders[name] = 1.0
    constants = replace(opts, **placeholders)
    return _CANONICAL.setdefault(constants, constants), tuple(inputs)


_CANONICAL: dict[Options, Options] = {}
_split_cached = functools.lru_cache(maxsize=256)(_split)


def join(constants: Options, inputs: tuple[Any, ...]) -> Options:
    """The options of a call from :func:`split`'s two parts (the inputs may be tensors)."""
    return replace(constants, **{name: value for name, value in zip(VARYING, inputs) if value is not None})


def markdown_table() -> str:
    """The docs' option table: name, default, description."""
    rows = ["| option | default | meaning |", "|---|---|---|"]
    for f in fields(Options):
        rows.append(f"| `{f.name}` | `{f.default!r}` | {f.metadata['doc']} |")
    return "\n".join(rows)
