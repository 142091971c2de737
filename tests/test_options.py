"""The declared option set (:mod:`smoothloss._options`): every public signature takes
its options with the declared defaults, the checks come from the declaration, and
compiled graphs take the varying options as inputs (one trace for a schedule)."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import sys
from pathlib import Path

import numpy as np
import pytest

import smoothloss
from smoothloss import _options
from smoothloss._options import NAMES, VARYING, Options

ROOT = Path(__file__).resolve().parent.parent

# Keywords of drop-ins that are a declared option under their original's name.
ALIASES = {"lse_square_scale": "z_loss", "smoothing": "label_smoothing", "ignore_class": "ignore_index"}

# Defaults a drop-in takes from its original, not from the declaration, with the reason.
DROP_IN_DEFAULTS = {
    # torch.nn.functional.cross_entropy / nn.CrossEntropyLoss / Liger: ignore_index=-100
    ("smoothloss.torch", "cross_entropy", "ignore_index"): -100,
    ("smoothloss.torch", "CrossEntropyLoss", "ignore_index"): -100,
    ("smoothloss.torch", "linear_cross_entropy", "ignore_index"): -100,
    ("smoothloss.torch", "LinearCrossEntropyLoss", "ignore_index"): -100,
    ("smoothloss.torch", "LigerCrossEntropyLoss", "ignore_index"): -100,
    ("smoothloss.torch", "liger_cross_entropy", "ignore_index"): -100,
    # Cut Cross-Entropy's IGNORE_INDEX
    ("smoothloss.cut_cross_entropy", "linear_cross_entropy", "ignore_index"): -100,
    ("smoothloss.cut_cross_entropy", "LinearCrossEntropy", "ignore_index"): -100,
    ("smoothloss.transformers", "causal_lm_loss", "ignore_index"): -100,
    ("smoothloss.transformers", "LabelSmoother", "ignore_index"): -100,  # transformers' LabelSmoother
    # timm's LabelSmoothingCrossEntropy(smoothing=0.1) and Mixup(label_smoothing=0.1)
    ("smoothloss.torch", "LabelSmoothingCrossEntropy", "label_smoothing"): 0.1,
    ("smoothloss.torch", "Mixup", "label_smoothing"): 0.1,
    ("smoothloss.torch", "FastCollateMixup", "label_smoothing"): 0.1,
    ("smoothloss", "Mixup", "label_smoothing"): 0.1,
    ("smoothloss", "FastCollateMixup", "label_smoothing"): 0.1,
    ("smoothloss.transformers", "causal_lm_loss", "label_smoothing"): 0.1,
    # timm's BinaryCrossEntropy(smoothing=0.1)
    ("smoothloss.torch", "BinaryCrossEntropy", "label_smoothing"): 0.1,
    # the vocab-parallel losses return per-position losses, as Megatron's does (SPEC)
    ("smoothloss.jax", "vocab_parallel_cross_entropy", "reduction"): "none",
    ("smoothloss.torch", "vocab_parallel_cross_entropy", "reduction"): "none",
    # Megatron-core's vocab_parallel_cross_entropy smooths with ε/(K-1) on the non-target classes
    ("smoothloss.torch", "vocab_parallel_cross_entropy", "convention"): "others",
    # Keras's own Loss(reduction=...): Keras's reductions, another set of values
    ("smoothloss.keras", "BinaryCrossentropy", "reduction"): "sum_over_batch_size",
    ("smoothloss.keras", "CategoricalCrossentropy", "reduction"): "sum_over_batch_size",
    ("smoothloss.keras", "SparseCategoricalCrossentropy", "reduction"): "sum_over_batch_size",
}


# Public callables whose signature takes the options as **options and forwards them
# unchanged to one that is checked here (smoothloss.tensorflow's thin wrappers).
FORWARDING = {"smoothloss.tensorflow"}

MODULES = {
    "smoothloss": None,
    "smoothloss.jax": "jax",
    "smoothloss.torch": "torch",
    "smoothloss.keras": "keras",
    "smoothloss.tensorflow": "tensorflow",
    "smoothloss.transformers": "torch",
    "smoothloss.cut_cross_entropy": "torch",
}


def _parameters(obj):
    target = obj.__init__ if inspect.isclass(obj) else obj
    try:
        return inspect.signature(target).parameters
    except (TypeError, ValueError):
        return {}


@pytest.mark.parametrize("module_name", sorted(MODULES))
def test_every_public_option_parameter_is_declared_with_its_default(module_name):
    if MODULES[module_name]:
        pytest.importorskip(MODULES[module_name])
    module = importlib.import_module(module_name)
    checked = 0
    for name in module.__all__:
        obj = getattr(module, name)
        if not callable(obj):
            continue
        for pname, param in _parameters(obj).items():
            option = ALIASES.get(pname, pname)
            if option not in NAMES:
                continue
            if param.kind is inspect.Parameter.VAR_KEYWORD or param.default is inspect.Parameter.empty:
                continue  # (required: no default to drift)
            if option == "label_smoothing" and param.default is None and "smoothing" in _parameters(obj):
                continue  # label_smoothing and its former name smoothing=: None until one is given
            expected = DROP_IN_DEFAULTS.get((module_name, name, option), _options.defaults()[option])
            if option == "axis" and param.default is not inspect.Parameter.empty and param.default != -1:
                pytest.fail(f"{module_name}.{name}({pname}=...) defaults to {param.default!r}, not -1")
            if option == "axis":
                continue  # (keras' axis=-1, jax's axis=-1 or a tuple: checked above where given)
            assert param.default == expected and type(param.default) is type(expected), (
                f"{module_name}.{name}({pname}={param.default!r}): the declaration says {expected!r}"
            )
            checked += 1
    if module_name not in FORWARDING:
        assert checked > 0, f"no option parameter found in {module_name}"


def test_forwarding_modules_take_options_as_keywords():
    """smoothloss.tensorflow's functions hand **options to the core functions, whose
    signatures are checked above."""
    pytest.importorskip("tensorflow")
    import smoothloss.tensorflow as sltf

    for name in ("cross_entropy", "cross_entropy_and_grad", "linear_cross_entropy"):
        kinds = [p.kind for p in inspect.signature(getattr(sltf, name)).parameters.values()]
        assert inspect.Parameter.VAR_KEYWORD in kinds


def test_the_core_signatures_list_every_declared_option():
    for fn in (smoothloss.cross_entropy, smoothloss.cross_entropy_and_grad):
        params = inspect.signature(fn).parameters
        assert [n for n in params if n in NAMES] == list(NAMES)
    for fn in (smoothloss.linear_cross_entropy, smoothloss.linear_cross_entropy_and_grad):
        params = inspect.signature(fn).parameters
        assert set(NAMES) - {"axis"} <= set(params)


def test_checked_uses_each_declared_check():
    assert Options.checked() == Options()
    opts = Options.checked(label_smoothing=np.float32(0.25), ignore_index=np.int64(3), kl=1)
    assert opts.label_smoothing == 0.25 and type(opts.label_smoothing) is float
    assert opts.ignore_index == 3 and type(opts.ignore_index) is int
    assert opts.kl is True
    with pytest.raises(ValueError, match=r"label_smoothing must lie in \[0, 1\], got 1.5"):
        Options.checked(label_smoothing=1.5)
    with pytest.raises(TypeError, match="label_smoothing must be a Python float"):
        Options.checked(label_smoothing=True)
    with pytest.raises(ValueError, match="unknown reduction 'avg'"):
        Options.checked(reduction="avg")
    with pytest.raises(ValueError, match="unknown convention"):
        Options.checked(convention="fairseq")
    with pytest.raises(ValueError, match="z_loss must be a finite number >= 0"):
        Options.checked(z_loss=float("nan"))
    with pytest.raises(ValueError, match="softcap must be None or a finite number > 0"):
        Options.checked(softcap=0.0)
    with pytest.raises(TypeError, match="ignore_index must be None or an int"):
        Options.checked(ignore_index=1.5)
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['focal_gamma'\]"):
        Options.checked(focal_gamma=2.0)


def test_every_field_declares_a_check_and_a_doc():
    for f in dataclasses.fields(Options):
        assert callable(f.metadata["check"]) and f.metadata["doc"], f.name
    assert VARYING == ("label_smoothing", "z_loss", "softcap")


def test_of_takes_the_declared_names_from_a_namespace():
    assert _options.of({"label_smoothing": 0.1, "weight": None, "reduction": "sum"}) == {
        "label_smoothing": 0.1, "reduction": "sum"}
    assert _options.of({"axis": 1, "kl": True}, exclude=("axis",)) == {"kl": True}


# Options a public function takes but does not hand on with _options.given, with the reason.
NOT_HANDED_ON = {
    # per position, then mixed; kl's entropy is the mixture's (the function computes both)
    ("_mixing.py", "mixup_cross_entropy"): {"reduction", "kl"},
}


def _given_calls():
    """``(file, function, its option parameters, the names given)`` of every
    ``_options.given(...)`` call in the package."""
    import ast

    found = []
    for path in sorted((ROOT / "smoothloss").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            a = fn.args
            params = {x.arg for x in a.posonlyargs + a.args + a.kwonlyargs} & set(NAMES)
            for call in ast.walk(fn):
                if isinstance(call, ast.Call) and ast.unparse(call.func) == "_options.given":
                    assert not call.args, f"{path.name}:{call.lineno}: given() takes keywords only"
                    for kw in call.keywords:  # name=name: the parameter itself, never another value
                        assert isinstance(kw.value, ast.Name) and kw.value.id == kw.arg, \
                            f"{path.name}:{call.lineno}: {kw.arg}= is not the parameter {kw.arg}"
                    found.append((path.name, fn.name, params, {kw.arg for kw in call.keywords}))
    return found


def test_each_given_call_names_exactly_its_functions_options():
    calls = _given_calls()
    assert len(calls) >= 9, calls  # torch's, the core's, jax's and the vocab-parallel entry points
    for file, fn, params, given in calls:
        expected = params - NOT_HANDED_ON.get((file, fn), set())
        assert given == expected, f"{file} {fn}: given {sorted(given)}, its options {sorted(expected)}"


def test_no_traced_entry_point_hands_on_locals():
    # Dynamo before torch 2.8 cannot trace locals(): a function that torch.compile may
    # trace names its options with _options.given. (Keras's and the Mixup classes'
    # constructors, which run outside any compiled region, read their locals().)
    import re

    for path in sorted((ROOT / "smoothloss").rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        if path.name in ("keras.py", "keras_linear.py", "_mixup.py", "torch_mixup.py", "_keras_support.py"):
            continue
        assert not re.search(r"\bof\((locals|vars)\(", text), f"{path.name} hands on locals() or vars()"


def test_given_keeps_the_declared_names_in_their_order():
    assert list(_options.given(kl=True, label_smoothing=0.1, axis=1)) == ["axis", "label_smoothing", "kl"]


def test_key_tells_a_bool_from_a_number():
    assert _options.key({"kl": True}) != _options.key({"kl": 1})
    assert _options.key({}) == _options.key(dict(_options.defaults()))


def test_non_defaults_for_a_repr():
    values = {"reduction": "mean", "label_smoothing": 0.1, "ignore_index": -100, "weight": None}
    assert _options.non_defaults(values) == {"label_smoothing": 0.1, "ignore_index": -100}
    assert _options.non_defaults(values, drop_in={"ignore_index": -100}) == {"label_smoothing": 0.1}


def test_split_and_join_share_one_constants_object_per_option_set():
    a = Options(label_smoothing=0.1, z_loss=1e-4, softcap=30.0)
    b = Options(label_smoothing=0.3, z_loss=2e-4, softcap=50.0)
    (ca, va), (cb, vb) = _options.split(a), _options.split(b)
    assert ca is cb  # one graph, one cache entry, one tf.function trace
    assert va == (0.1, 1e-4, 30.0) and vb == (0.3, 2e-4, 50.0)
    assert _options.join(ca, va) == a and _options.join(cb, vb) == b
    # a zero (or no softcap) stays a constant: its term is not in the graph
    zero, values = _options.split(Options(label_smoothing=0.0, z_loss=1e-4))
    assert values == (None, 1e-4, None) and zero.label_smoothing == 0.0 and zero.softcap is None
    assert zero is not ca
    # with kl, the smoothing is a constant (the entropy is computed from it in Python)
    kl, values = _options.split(Options(label_smoothing=0.1, kl=True))
    assert values == (None, None, None) and kl.label_smoothing == 0.1


def test_the_docs_option_table_is_the_declaration():
    sys.path.insert(0, str(ROOT / "docs" / "hooks"))
    try:
        hook = importlib.import_module("options_table")
    finally:
        sys.path.pop(0)
    page = hook.on_page_markdown(f"before\n\n{hook.MARKER}\n\nafter", page=None, config=None, files=None)
    table = _options.markdown_table()
    assert table in page and hook.MARKER not in page
    for f in dataclasses.fields(Options):
        assert f"| `{f.name}` | `{f.default!r}` | {f.metadata['doc']} |" in table
    pages = [p for p in (ROOT / "docs").glob("*.md") if hook.MARKER in p.read_text(encoding="utf-8")]
    assert pages, "no docs page shows the option table"


def test_a_tensorflow_smoothing_schedule_traces_the_compiled_backward_once():
    """An eager loop with a new ε and z-loss every step: the XLA backward is traced once,
    and every step's gradient is the float64 reference's."""
    tf = pytest.importorskip("tensorflow")
    from smoothloss.backends import tensorflow_compiled as tf_binding
    from smoothloss.testing import reference_cross_entropy

    previous = smoothloss.set_compile_mode("always")
    try:
        compiled = tf_binding.XLA.kernels_by_name["backward"][0]
        before = compiled.experimental_get_tracing_count()
        rng = np.random.default_rng(0)
        x_np = rng.normal(size=(32, 50)).astype(np.float32)
        y_np = rng.integers(0, 50, 32)
        x = tf.Variable(x_np)
        for step in range(8):
            eps, z = 0.02 + 0.03 * step, 1e-4 * (step + 1)
            with tf.GradientTape() as tape:
                loss = smoothloss.cross_entropy(x, tf.constant(y_np), label_smoothing=eps, z_loss=z, softcap=20.0 + step)
            g = tape.gradient(loss, x)
            ref_loss, ref_grad = reference_cross_entropy(
                x_np.astype(np.float64), y_np, label_smoothing=eps, z_loss=z, softcap=20.0 + step
            )
            np.testing.assert_allclose(g.numpy(), ref_grad, rtol=2e-5, atol=2e-7)
            np.testing.assert_allclose(loss.numpy(), ref_loss, rtol=2e-6)
        assert compiled.experimental_get_tracing_count() - before <= 1
    finally:
        smoothloss.set_compile_mode(previous)
