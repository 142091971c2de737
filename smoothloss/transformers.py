"""Hugging Face Transformers drop-ins: the ``Trainer``'s label smoother and a causal-LM
loss for ``Trainer(compute_loss_func=...)``, computed by :func:`smoothloss.cross_entropy`.

``TrainingArguments(label_smoothing_factor=ε)`` makes the ``Trainer`` use
``transformers.trainer_pt_utils.LabelSmoother``. Its loss, for the non-padded tokens t of
the batch (labels shifted by one for causal LMs) and V classes, is

``(1-ε)·Σ_t(-log p_t,y)/N + ε·Σ_t Σ_c(-log p_t,c)/(N·V)
= Σ_t [(1-ε)·(-log p_t,y) + ε·mean_c(-log p_t,c)] / N``,

with N the number of non-padded tokens, or the Trainer's ``num_items_in_batch`` when it
passes one. The bracket is smoothloss's ``convention="uniform"`` with
``label_smoothing=ε`` (PyTorch's rule: every class gets ε/V). So :class:`LabelSmoother`
calls ``smoothloss.cross_entropy(logits, labels, label_smoothing=ε, ignore_index=...)``
with ``reduction="mean"``, or ``reduction="sum"`` divided by ``num_items_in_batch``.

Importing :mod:`smoothloss` never imports this module. This module imports torch (through
:mod:`smoothloss.torch`) and never imports transformers: it works on the model outputs
that transformers hands over (a ``ModelOutput``, which is a ``dict``, or a tuple).

Deliberate differences from transformers:

* When no token is counted (every label is ``ignore_index``, or ``num_items_in_batch``
  is 0) the loss is 0 with a zero gradient, as everywhere in smoothloss; transformers
  gives NaN.
* A label outside [0, V) other than ``ignore_index`` raises ``ValueError``.
  transformers clamps negative labels to class 0 (so -1 silently trains class 0) and
  fails in ``gather`` on labels >= V.
* 16-bit logits: the whole loss is accumulated in float32. transformers computes the
  log-softmax and the target term in the logits' dtype and only the smoothing sum in
  float32, so bf16 results differ by bf16 rounding. For float64 logits transformers sums
  the smoothing term in float32; smoothloss keeps float64.
* A bare logits tensor is taken as the logits; transformers would take its first row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from smoothloss import _validation as V
from smoothloss._torch_support import forward as _forward

__all__ = ["LabelSmoother", "causal_lm_loss"]


def _logits(model_output: Any) -> Tensor:
    """The logits of a model output, read as transformers reads them: ``["logits"]`` of a
    dict (``ModelOutput`` is one), else the first element. A tensor is the logits."""
    if isinstance(model_output, Tensor):
        return model_output
    logits = model_output["logits"] if isinstance(model_output, dict) else model_output[0]
    if not isinstance(logits, Tensor):
        raise TypeError(
            f"the model output's logits must be a torch.Tensor, got {type(logits).__module__}.{type(logits).__name__}"
        )
    return logits


def _labels(labels: Any, logits: Tensor) -> Tensor:
    if labels is None:
        raise ValueError("labels are None: the loss needs the batch's labels (Trainer passes inputs['labels'])")
    if not isinstance(labels, Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__module__}.{type(labels).__name__}")
    # transformers' gather also takes labels with a trailing axis of size 1
    if labels.ndim == logits.ndim and labels.shape[-1] == 1:
        labels = labels.squeeze(-1)
    return labels.to(logits.device)


def _token_mean(
    logits: Tensor, labels: Tensor, num_items_in_batch: Any, label_smoothing: float, ignore_index: int
) -> Tensor:
    """The smoothed cross-entropy of the non-ignored tokens, divided by their number, or by
    ``num_items_in_batch`` when given (the Trainer's count over all accumulated batches).
    A count of 0 divides by 1: the sum is then 0 too."""
    options = dict(axis=-1, label_smoothing=label_smoothing, ignore_index=ignore_index)
    if num_items_in_batch is None:
        return _forward(logits, labels, reduction="mean", **options)
    total = _forward(logits, labels, reduction="sum", **options)
    if isinstance(num_items_in_batch, Tensor):
        count = num_items_in_batch.to(total.device)
        return total / torch.where(count == 0, torch.ones_like(count), count)
    return total / (num_items_in_batch if num_items_in_batch != 0 else 1)


@dataclass
class LabelSmoother:
    r"""Drop-in for ``transformers.trainer_pt_utils.LabelSmoother``.

    Same fields (``epsilon=0.1``, ``ignore_index=-100``), same call
    ``(model_output, labels, shift_labels=False, num_items_in_batch=None)`` and same
    numbers: the mean over non-padded tokens of
    ``(1-ε)·(-log p_y) + ε·mean_c(-log p_c)``, i.e.
    ``smoothloss.cross_entropy(logits, labels, label_smoothing=ε, ignore_index=ignore_index)``.
    With ``shift_labels=True`` (the Trainer's choice for causal LMs) position i of the
    logits predicts label i+1. With ``num_items_in_batch`` the summed loss is divided by
    it instead of by this batch's token count, as transformers does. The differences
    from transformers are listed in :mod:`smoothloss.transformers`.

    Args:
        epsilon: the label smoothing ε in [0, 1].
        ignore_index: the label of padded positions.

    Example:
        >>> import torch
        >>> from smoothloss.transformers import LabelSmoother
        >>> logits = torch.randn(2, 5, 11, dtype=torch.float64)
        >>> labels = torch.randint(0, 11, (2, 5))
        >>> labels[1, 3:] = -100
        >>> loss = LabelSmoother(epsilon=0.1)({"logits": logits}, labels, shift_labels=True)
        >>> logp = logits[:, :-1].log_softmax(-1)
        >>> y, keep = labels[:, 1:].clamp(min=0), labels[:, 1:] != -100
        >>> per_token = 0.9 * -logp.gather(-1, y[..., None])[..., 0] + 0.1 * -logp.mean(-1)
        >>> torch.allclose(loss, per_token[keep].mean())
        True
    """

    epsilon: float = 0.1
    ignore_index: int = -100

    def __post_init__(self) -> None:
        self.epsilon = V.check_smoothing(self.epsilon, "epsilon")
        if not V.is_int_scalar(self.ignore_index):
            raise TypeError(f"ignore_index must be an int, got {type(self.ignore_index).__name__}")
        self.ignore_index = int(self.ignore_index)

    def __call__(
        self, model_output: Any, labels: Tensor, shift_labels: bool = False, num_items_in_batch: Any = None
    ) -> Tensor:
        """The smoothed loss of ``model_output``'s logits (classes last) against ``labels``."""
        logits = _logits(model_output)
        labels = _labels(labels, logits)
        if shift_labels:
            logits, labels = logits[..., :-1, :], labels[..., 1:]
        return _token_mean(logits, labels, num_items_in_batch, self.epsilon, self.ignore_index)


class _CausalLMLoss:
    """The callable :func:`causal_lm_loss` returns."""

    def __init__(self, label_smoothing: float, ignore_index: int) -> None:
        self.label_smoothing = V.check_smoothing(label_smoothing)
        if not V.is_int_scalar(ignore_index):
            raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")
        self.ignore_index = int(ignore_index)

    def __call__(
        self, outputs: Any, labels: Tensor | None, num_items_in_batch: Any = None, shift_labels: Tensor | None = None
    ) -> Tensor:
        logits = _logits(outputs)
        if shift_labels is None:
            labels = _labels(labels, logits)
            logits, labels = logits[..., :-1, :], labels[..., 1:]
        else:  # already shifted (context parallelism): every position, labels unused, as ForCausalLMLoss
            labels = _labels(shift_labels, logits)
            if tuple(labels.shape) != tuple(logits.shape[:-1]) and labels.numel() * logits.shape[-1] == logits.numel():
                labels = labels.reshape(logits.shape[:-1])  # ForCausalLMLoss flattens both
        return _token_mean(logits, labels, num_items_in_batch, self.label_smoothing, self.ignore_index)

    def __repr__(self) -> str:
        return f"causal_lm_loss(label_smoothing={self.label_smoothing}, ignore_index={self.ignore_index})"


def causal_lm_loss(label_smoothing: float = 0.1, ignore_index: int = -100) -> Any:
    r"""A causal-LM loss for ``transformers.Trainer(compute_loss_func=...)``.

    Returns a callable ``loss(outputs, labels, num_items_in_batch=None,
    shift_labels=None)``: the signature the Trainer calls ``compute_loss_func`` with, plus
    ``ForCausalLMLoss``'s ``shift_labels``. It shifts the labels as transformers'
    ``ForCausalLMLoss`` does (the logits at position i predict ``labels[..., i+1]``);
    given ``shift_labels`` (labels already shifted, as context parallelism splits them),
    it uses them as they are against every position of the logits and ignores
    ``labels``, as ``ForCausalLMLoss`` does. It
    returns ``smoothloss.cross_entropy(logits, labels, label_smoothing=ε,
    ignore_index=ignore_index)`` with ``reduction="mean"`` (over the non-ignored tokens),
    or, when ``num_items_in_batch`` is given, ``reduction="sum"`` divided by it. The
    Trainer passes the token count of the whole accumulated batch there, so the loss is
    the token mean over all gradient-accumulation steps, as with ``ForCausalLMLoss``.

    At ``label_smoothing=0`` the result is ``ForCausalLMLoss``'s. The Trainer's own
    ``LabelSmoother`` gives the same numbers as this loss whenever the Trainer hands it
    ``num_items_in_batch`` (models whose ``forward`` takes ``**kwargs``). With this loss
    the Trainer always counts the tokens, and treats the loss as already scaled for
    gradient accumulation.

    Args:
        label_smoothing: ε in [0, 1] (PyTorch's convention: every class gets ε/V).
        ignore_index: the label of positions that are not trained on.

    Example:
        >>> import torch
        >>> from smoothloss.transformers import causal_lm_loss
        >>> loss_fn = causal_lm_loss(label_smoothing=0.1)
        >>> logits = torch.randn(2, 6, 13, dtype=torch.float64)
        >>> labels = torch.randint(0, 13, (2, 6))
        >>> ref = torch.nn.functional.cross_entropy(
        ...     logits[:, :-1].reshape(-1, 13), labels[:, 1:].reshape(-1), label_smoothing=0.1, reduction="sum")
        >>> bool(torch.allclose(loss_fn({"logits": logits}, labels, num_items_in_batch=20), ref / 20))
        True
    """
    return _CausalLMLoss(label_smoothing, ignore_index)
