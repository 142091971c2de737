"""The dense harness's steps: one forward+backward of each implementation, per framework.

A "step" is a zero-argument callable that runs one forward+backward with respect to the
logits to completion and returns the loss; ``reset()`` drops whatever the step keeps alive
between calls (torch's ``.grad``). ``STEP_BUILDERS[framework](x, y, eps, eager, device)``
makes every implementation's step of ``smoothloss.bench.dense.IMPLS[framework]`` on the
same NumPy logits ``x`` and labels ``y``; ``smoothloss.bench.dense`` times them and
measures their memory.

Imports no other module of the benchmark, and each framework only inside its builder.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np


class Steps:
    """The steps of one framework on one pair of inputs, by implementation key."""

    def __init__(self, steps: dict[str, Callable[[], Any]], to_float: Callable[[Any], float],
                 reset: Callable[[], None] = lambda: None, extra: dict[str, Callable[[], Any]] | None = None,
                 compiled_calls: Callable[[], int] | None = None,
                 device_peak: Callable[[Callable[[], Any]], tuple[Any, float, float]] | None = None):
        self.steps = steps
        self.to_float = to_float
        self.reset = reset
        self.extra = extra or {}
        self.compiled_calls = compiled_calls  # torch: how many calls ran the compiled kernels so far
        self.device_peak = device_peak  # off the CPU: run a step -> (output, bytes before, peak bytes)


def _device_index(device: str) -> int:
    return int(device.partition(":")[2] or 0)


def torch_device(device: str) -> Any:
    """The ``torch.device`` of a ``--device`` value: 'cpu', 'cuda' (the first GPU), 'cuda:1'."""
    import torch

    return torch.device(device if ":" in device or device == "cpu" else f"{device}:0")


def _torch_steps(x_np: np.ndarray, y_np: np.ndarray, eps: float, eager: bool, device: str = "cpu") -> Steps:
    import torch
    import torch.nn.functional as F

    import smoothloss
    from smoothloss.backends.torch_compiled import COMPILED

    dev = torch_device(device)
    on_gpu = dev.type != "cpu"
    x = torch.from_numpy(x_np).to(dev).requires_grad_()
    y = torch.from_numpy(y_np).to(dev)

    def sync() -> None:
        if on_gpu:
            torch.cuda.synchronize(dev)

    def timm_formula(x: Any, y: Any) -> Any:  # timm/loss/cross_entropy.py LabelSmoothingCrossEntropy
        logprobs = F.log_softmax(x, dim=-1)
        nll_loss = -logprobs.gather(dim=-1, index=y.unsqueeze(1)).squeeze(1)
        smooth_loss = -logprobs.mean(dim=-1)
        loss = (1.0 - eps) * nll_loss + eps * smooth_loss
        return loss.mean()

    def sl(x: Any, y: Any) -> Any:
        return smoothloss.cross_entropy(x, y, label_smoothing=eps)

    @functools.cache
    def compiled_builtin() -> Callable[[Any, Any], Any]:
        """``torch.compile(F.cross_entropy)``, made at its step's first call: made with the steps,
        it would import the compiler's modules before smoothloss's first call, taking their
        time out of that call's."""
        return torch.compile(lambda x, y: F.cross_entropy(x, y, label_smoothing=eps))

    def make(fn: Callable[[Any, Any], Any], mode: str | None = None) -> Callable[[], Any]:
        """One forward+backward; with ``mode``, smoothloss's compile mode for the step, restored after."""

        def step() -> Any:
            x.grad = None
            previous = None if mode is None else smoothloss.set_compile_mode(mode)
            try:
                loss = fn(x, y)
                loss.backward()
            finally:
                if previous is not None:
                    smoothloss.set_compile_mode(previous)
            sync()
            return loss

        return step

    def floor() -> Any:
        with torch.no_grad():
            out = torch.softmax(x, -1)
        sync()
        return out

    def reset() -> None:
        x.grad = None

    def cuda_peak(run: Callable[[], Any]) -> tuple[Any, float, float]:
        sync()
        torch.cuda.reset_peak_memory_stats(dev)
        before = torch.cuda.memory_allocated(dev)
        out = run()
        return out, float(before), float(torch.cuda.max_memory_allocated(dev))

    steps = {
        "smoothloss": make(sl),
        "smoothloss.eager": make(sl, "never"),
        "smoothloss.compiled": make(sl, "always"),
        "F.cross_entropy": make(lambda x, y: F.cross_entropy(x, y, label_smoothing=eps)),
        "torch_compiled_builtin": make(lambda x, y: compiled_builtin()(x, y)),
        "timm": make(timm_formula),
        "floor": floor,
    }
    return Steps(steps, lambda v: float(v.detach()), reset, compiled_calls=lambda: COMPILED.calls,
                 device_peak=cuda_peak if on_gpu else None)


def _jax_steps(x_np: np.ndarray, y_np: np.ndarray, eps: float, eager: bool, device: str = "cpu") -> Steps:
    import jax
    import jax.numpy as jnp
    import optax

    import smoothloss

    dev = jax.devices("cpu" if device == "cpu" else "gpu")[_device_index(device)]
    x = jax.device_put(jnp.asarray(x_np), dev)
    y = jax.device_put(jnp.asarray(y_np.astype(np.int32)), dev)
    k = x_np.shape[-1]

    def sl(x: Any, y: Any) -> Any:
        return smoothloss.cross_entropy(x, y, label_smoothing=eps)

    def ox(x: Any, y: Any) -> Any:
        return optax.softmax_cross_entropy(x, optax.smooth_labels(jax.nn.one_hot(y, k), eps)).mean()

    jitted = {"smoothloss": jax.jit(jax.value_and_grad(sl)), "optax": jax.jit(jax.value_and_grad(ox))}
    floor = jax.jit(jax.nn.softmax)

    def make(f: Any) -> Callable[[], Any]:
        def step() -> Any:
            out = f(x, y)
            jax.block_until_ready(out)
            return out[0]

        return step

    def floor_step() -> Any:
        return jax.block_until_ready(floor(x))

    def analysis(key: str) -> Callable[[], Any]:
        return lambda: jitted[key].lower(x, y).compile().memory_analysis()

    analyses = {k_: analysis(k_) for k_ in jitted}
    analyses["floor"] = lambda: floor.lower(x).compile().memory_analysis()
    return Steps({**{k_: make(f) for k_, f in jitted.items()}, "floor": floor_step}, float, extra=analyses)


def _tf_steps(x_np: np.ndarray, y_np: np.ndarray, eps: float, eager: bool, device: str = "cpu") -> Steps:
    import keras
    import tensorflow as tf

    import smoothloss

    on_gpu = device != "cpu"
    where = f"/GPU:{_device_index(device)}" if on_gpu else "/CPU:0"
    with tf.device(where):
        x = tf.identity(tf.constant(x_np))
        y = tf.identity(tf.constant(y_np))
    k = x_np.shape[-1]
    cce = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=eps)
    scce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    fns = {
        "smoothloss": lambda x, y: smoothloss.cross_entropy(x, y, label_smoothing=eps),
        "keras.CCE": lambda x, y: cce(tf.one_hot(y, k), x),
        "keras.SCCE": lambda x, y: scce(y, x),
    }

    def sync() -> None:
        if on_gpu:
            tf.test.experimental.sync_devices()

    def make(fn: Callable[[Any, Any], Any]) -> Callable[[], Any]:
        def grad_step(x: Any, y: Any) -> Any:
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = fn(x, y)
            return loss, tape.gradient(loss, x)

        g = grad_step if eager else tf.function(grad_step)

        def step() -> Any:
            with tf.device(where):
                loss, _grad = g(x, y)
            sync()
            return loss

        return step

    softmax = tf.nn.softmax if eager else tf.function(tf.nn.softmax)

    def floor() -> Any:
        with tf.device(where):
            out = softmax(x)
        sync()
        return out

    def gpu_peak(run: Callable[[], Any]) -> tuple[Any, float, float]:
        name = where.strip("/")
        sync()
        tf.config.experimental.reset_memory_stats(name)
        before = tf.config.experimental.get_memory_info(name)["current"]
        out = run()
        return out, float(before), float(tf.config.experimental.get_memory_info(name)["peak"])

    return Steps({**{k_: make(f) for k_, f in fns.items()}, "floor": floor}, lambda v: float(v.numpy()),
                 device_peak=gpu_peak if on_gpu else None)


STEP_BUILDERS = {"torch": _torch_steps, "jax": _jax_steps, "tensorflow": _tf_steps}
