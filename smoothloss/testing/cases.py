"""The conformance grid: deterministic cases shared by the test suite and ``smoothloss check``.

Each case fixes K, a layout (rank-2, rank-3 with the classes last, rank-3 with the
classes on axis 1), a dtype, the kind of target (class indices or probabilities) and
a set of options. ``Case.make()`` draws its arrays from a seed derived from its id, so
every backend sees the same numbers.
"""

from __future__ import annotations

import itertools
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "Case", "OPTION_SETS", "LAYOUTS", "LINEAR_COMPILED_OPTIONS", "compiled_cases", "conformance_cases",
    "linear_compiled_problem", "IGNORE",
]

IGNORE = -100

# name -> options; "weight" and "ignore" are filled in by Case.make().
OPTION_SETS: dict[str, dict[str, Any]] = {
    "plain": {},
    "ls": {"label_smoothing": 0.1},
    "ls1": {"label_smoothing": 1.0},
    "others": {"label_smoothing": 0.2, "convention": "others"},
    "weight": {"weight": True},
    "ls-weight": {"label_smoothing": 0.1, "weight": True},
    "others-weight-sum": {"label_smoothing": 0.3, "convention": "others", "weight": True, "reduction": "sum"},
    "ignore": {"ignore": True},
    "ls-weight-ignore": {"label_smoothing": 0.1, "weight": True, "ignore": True},
    "others-ignore-sum": {"label_smoothing": 0.2, "convention": "others", "ignore": True, "reduction": "sum"},
    "none": {"label_smoothing": 0.1, "reduction": "none"},
    "none-weight-ignore": {"label_smoothing": 0.3, "weight": True, "ignore": True, "reduction": "none"},
    "sum": {"label_smoothing": 0.1, "reduction": "sum"},
    "zloss": {"label_smoothing": 0.1, "z_loss": 1e-2},
    "softcap": {"label_smoothing": 0.1, "softcap": 3.0},
    "kl": {"label_smoothing": 0.1, "kl": True},
    "kl-others-weight": {"label_smoothing": 0.2, "convention": "others", "kl": True, "weight": True},
    "everything": {
        "label_smoothing": 0.2, "convention": "others", "weight": True, "ignore": True,
        "z_loss": 1e-3, "softcap": 5.0, "kl": True,
    },
    "everything-uniform-none": {
        "label_smoothing": 0.15, "weight": True, "ignore": True, "z_loss": 1e-3,
        "softcap": 4.0, "kl": True, "reduction": "none",
    },
}

# name -> (positions shape, class axis); K is inserted at the class axis.
LAYOUTS: dict[str, tuple[tuple[int, ...], int]] = {
    "2d": ((6,), -1),
    "3d-last": ((2, 3), -1),
    "3d-axis1": ((2, 3), 1),
}

# At K=1000 a smaller grid keeps the suite quick; every option still runs at K=2, 3, 10.
_LARGE_K_OPTIONS = ("ls", "others-weight-sum", "ls-weight-ignore", "zloss", "softcap", "everything")


@dataclass(frozen=True)
class Case:
    K: int
    layout: str
    dtype: str
    targets: str  # "int" or "prob"
    option_set: str
    options: dict[str, Any] = field(compare=False, hash=False)

    @property
    def id(self) -> str:
        return f"{self.option_set}-{self.targets}-K{self.K}-{self.layout}-{self.dtype}"

    @property
    def axis(self) -> int:
        return LAYOUTS[self.layout][1]

    def make(self) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """(logits, targets, options) as NumPy arrays; logits already rounded to ``dtype``.

        ``options`` holds a NumPy ``weight`` (if any) and ``ignore_index`` in place of the
        ``weight``/``ignore`` flags.
        """
        rng = np.random.default_rng(zlib.crc32(self.id.encode()))
        positions, axis = LAYOUTS[self.layout]
        shape = positions + (self.K,)
        logits = rng.normal(scale=2.0, size=shape)
        opts = {k: v for k, v in self.options.items() if k not in ("weight", "ignore")}
        if self.targets == "int":
            targets = rng.integers(0, self.K, size=positions)
            if self.options.get("ignore"):
                mask = rng.random(positions) < 0.3
                mask.flat[0] = True  # at least one ignored
                mask.flat[-1] = False  # and at least one kept
                targets = np.where(mask, IGNORE, targets)
                opts["ignore_index"] = IGNORE
        else:
            raw = rng.normal(size=shape)
            targets = np.exp(raw) / np.exp(raw).sum(-1, keepdims=True)
        if self.options.get("weight"):
            opts["weight"] = rng.uniform(0.5, 2.0, size=self.K)
        if axis != -1:
            logits = np.moveaxis(logits, -1, axis)
            if self.targets == "prob":
                targets = np.moveaxis(targets, -1, axis)
            opts["axis"] = axis
        logits = np.ascontiguousarray(logits.astype(self.dtype).astype(np.float64))
        targets = np.ascontiguousarray(targets)
        if "weight" in opts:
            opts["weight"] = opts["weight"].astype(self.dtype).astype(np.float64)
        return logits, targets, opts


def conformance_cases(
    dtypes: tuple[str, ...] = ("float32", "float64"),
    ks: tuple[int, ...] = (2, 3, 10, 1000),
) -> list[Case]:
    """The grid: every option set × K × dtype, both target kinds; layouts rotate."""
    out = []
    layouts = list(LAYOUTS)
    n = 0
    for name, opts in OPTION_SETS.items():
        kinds = ("int",) if opts.get("ignore") else ("int", "prob")
        for kind, K, dtype in itertools.product(kinds, ks, dtypes):
            if K >= 1000 and name not in _LARGE_K_OPTIONS:
                continue
            out.append(Case(K, layouts[n % len(layouts)], dtype, kind, name, opts))
            n += 1
    return out


def compiled_cases() -> list[Case]:
    """The cases the compiled kernels are checked on (few graphs to compile): every
    option set with class indices in float64 and with probabilities in float32. The
    ignore_index sets have class indices only; two of them (the common training setup
    and everything at once) also run in float32."""
    out = []
    for n, (name, opts) in enumerate(OPTION_SETS.items()):
        layout = ("2d", "3d-last", "3d-axis1")[n % 3]
        out.append(Case(10, layout, "float64", "int", name, opts))
        if not opts.get("ignore"):
            out.append(Case(7, layout, "float32", "prob", name, opts))
        elif name in ("ls-weight-ignore", "everything"):
            out.append(Case(7, layout, "float32", "int", name, opts))
    return out


# The chunked linear loss through the compiled kernels (tests/test_compiled*.py): each
# set is a graph of the dense loss with reduction="none" (the chunk step's).
LINEAR_COMPILED_OPTIONS: dict[str, dict[str, Any]] = {
    "ls-mean": {"label_smoothing": 0.1},
    "ls-ignore-z-sum": {"label_smoothing": 0.2, "ignore_index": 2, "z_loss": 1e-3, "reduction": "sum"},
    "softcap-kl-none": {"label_smoothing": 0.1, "softcap": 5.0, "kl": True, "reduction": "none"},
}


def linear_compiled_problem() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(hidden (11, 6), weight (9, 6), bias (9,), labels (11,))`` in float64 for
    :data:`LINEAR_COMPILED_OPTIONS`: rows 1 and 4 have label 2, which ignore_index=2
    leaves out; chunks of 4 rows make three chunks, the last one short."""
    rng = np.random.default_rng(11)
    N, H, V = 11, 6, 9
    hidden, weight, bias = rng.normal(size=(N, H)), rng.normal(size=(V, H)), rng.normal(size=V)
    labels = rng.integers(0, V, N)
    labels[[1, 4]] = 2
    return hidden, weight, bias, labels
