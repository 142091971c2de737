"""Mixup + CutMix with label smoothing in a five-line training loop: JAX, Keras, PyTorch.

Each loop trains a linear classifier on random images whose labels a fixed random
projection decides, so there is something to learn; it prints the training loss (on
mixed images and smoothed soft targets) and the plain cross-entropy and accuracy on the
unmixed data before and after. Small: each part runs in seconds on a CPU.

    python examples/mixup_training.py            # every framework that is installed
    python examples/mixup_training.py jax keras  # some of them: jax, keras, torch

* JAX: ``Mixup.sample`` draws λ, the box and the cutmix switch on the host; the images
  are mixed inside ``jax.jit`` (``mix_images``) and the loss is ``mixup_cross_entropy``,
  which never builds the B×K soft targets.
* Keras (any backend): ``Mixup`` mixes NumPy batches and returns the smoothed soft
  targets for ``train_on_batch`` with ``CategoricalCrossentropy(from_logits=True)``.
* PyTorch: timm's recipe with the drop-ins ``smoothloss.torch.Mixup`` and
  ``smoothloss.torch.BinaryCrossEntropy`` (soft targets thresholded at 0.2).

The process exits with status 1 if training did not lower the unmixed loss.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import numpy as np

import smoothloss

N, B, K, H, W, C = 256, 32, 10, 8, 8, 3  # examples, batch, classes, image size
STEPS, LR, EPS = 64, 0.05, 0.1  # training steps, learning rate, label smoothing
MIX = dict(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=EPS, num_classes=K, seed=0)


def dataset(layout: str) -> tuple[np.ndarray, np.ndarray]:
    """Random float32 images (N, H, W, C) or (N, C, H, W) and int64 labels a projection decides."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, H, W, C)).astype(np.float32)
    labels = np.argmax(x.reshape(N, -1) @ rng.normal(size=(H * W * C, K)), axis=1)
    return (x if layout == "NHWC" else x.transpose(0, 3, 1, 2).copy()), labels


def batches(x: np.ndarray, y: np.ndarray):
    """STEPS batches of B examples, cycling through the data in order."""
    for step in range(STEPS):
        idx = np.arange(step * B, (step + 1) * B) % N
        yield x[idx], y[idx]


class Report:
    """Collects the losses of a run and prints them."""

    def __init__(self, framework: str) -> None:
        self.framework, self.losses = framework, []

    def log(self, loss) -> None:
        self.losses.append(float(loss))

    def show(self, before: tuple[float, float], after: tuple[float, float]) -> bool:
        every = STEPS // 8
        steps = "  ".join(f"{i}:{self.losses[i]:.4f}" for i in range(0, STEPS, every))
        print(f"[{self.framework}] train loss (mixed, smoothed) by step  {steps}  {STEPS - 1}:{self.losses[-1]:.4f}")
        print(
            f"[{self.framework}] unmixed data: cross-entropy {before[0]:.4f} -> {after[0]:.4f}, "
            f"accuracy {before[1]:.3f} -> {after[1]:.3f}"
        )
        return after[0] < before[0]


def clean_metrics(logits, labels) -> tuple[float, float]:
    """Plain cross-entropy and accuracy of logits (any framework) on the unmixed data."""
    loss = float(smoothloss.cross_entropy(logits, labels))
    logits = np.asarray(logits.detach() if hasattr(logits, "detach") else logits)
    return loss, float(np.mean(np.argmax(logits, axis=1) == np.asarray(labels)))


# ----------------------------------------------------------------------------- JAX
def run_jax() -> bool:
    import jax
    import jax.numpy as jnp

    x_all, y_all = dataset("NHWC")
    x_all, y_all = jnp.asarray(x_all), jnp.asarray(y_all, dtype=jnp.int32)
    params = {"w": jnp.zeros((H * W * C, K)), "b": jnp.zeros(K)}

    def model(params, x):
        return x.reshape(x.shape[0], -1) @ params["w"] + params["b"]

    @jax.jit
    def train_step(params, x, y, lam, box, cutmix):
        def loss_fn(params):
            mixed = smoothloss.mix_images(x, lam=lam, box=box, cutmix=cutmix, layout="NHWC")
            return smoothloss.mixup_cross_entropy(model(params, mixed), y, lam=lam, label_smoothing=EPS)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        return jax.tree.map(lambda p, g: p - LR * g, params, grads), loss

    report, before = Report("jax"), clean_metrics(model(params, x_all), y_all)
    # --- the loop
    mixup = smoothloss.Mixup(**MIX, layout="NHWC")
    for x, y in batches(x_all, y_all):
        p = mixup.sample(B, x.shape)  # λ, box and cutmix switch, drawn on the host
        params, loss = train_step(params, x, y, p.lam, p.box, p.cutmix)  # mixed inside jit
        report.log(loss)
    # ---
    return report.show(before, clean_metrics(model(params, x_all), y_all))


# ----------------------------------------------------------------------------- Keras
def run_keras() -> bool:
    import keras

    from smoothloss.keras import CategoricalCrossentropy

    x_all, y_all = dataset("NHWC")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((H, W, C)), keras.layers.Flatten(), keras.layers.Dense(K)])
    model.compile(optimizer=keras.optimizers.SGD(LR), loss=CategoricalCrossentropy(from_logits=True))
    report = Report(f"keras/{keras.backend.backend()}")
    before = clean_metrics(model.predict(x_all, verbose=0), y_all)
    # --- the loop
    mixup = smoothloss.Mixup(**MIX, layout="NHWC")
    for x, y in batches(x_all, y_all):
        mixed, targets = mixup(x, y)  # NumPy in, NumPy out: mixed images, smoothed soft targets
        loss = model.train_on_batch(mixed, targets)
        report.log(loss)
    # ---
    return report.show(before, clean_metrics(model.predict(x_all, verbose=0), y_all))


# ----------------------------------------------------------------------------- PyTorch
def run_torch() -> bool:
    import torch

    from smoothloss.torch import BinaryCrossEntropy, Mixup

    x_np, y_np = dataset("NCHW")
    x_all, y_all = torch.from_numpy(x_np), torch.from_numpy(y_np)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(C * H * W, K))
    optimizer = torch.optim.SGD(model.parameters(), lr=LR * 10)  # BCE's gradients are smaller
    report = Report("torch")
    with torch.no_grad():
        before = clean_metrics(model(x_all), y_all)
    # --- the loop
    mixup_fn, criterion = Mixup(**MIX), BinaryCrossEntropy(target_threshold=0.2)
    for x, y in batches(x_all, y_all):
        mixed, targets = mixup_fn(x, y)  # new tensors; x is left as it was
        loss = criterion(model(mixed), targets)
        optimizer.zero_grad(), loss.backward(), optimizer.step()
        report.log(loss.item())
    # ---
    with torch.no_grad():
        return report.show(before, clean_metrics(model(x_all), y_all))


RUNS = {"jax": ("jax", run_jax), "keras": ("keras", run_keras), "torch": ("torch", run_torch)}


def main(argv: list[str]) -> int:
    unknown = [name for name in argv if name not in RUNS]
    if unknown:
        print(f"unknown framework(s) {unknown}; choose from {list(RUNS)}", file=sys.stderr)
        return 2
    names = argv or [name for name, (module, _) in RUNS.items() if importlib.util.find_spec(module)]
    ok = True
    for name in names:
        ok = RUNS[name][1]() and ok
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.exit(main(sys.argv[1:]))
