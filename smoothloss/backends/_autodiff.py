"""The losses' entry points over a binding's facts: the layer above the core.

:class:`Closed` runs the closed form (the core's forward and backward, and the loop
over the chunked loss's row chunks) on one binding's facts; a framework's compiled
kernels are a subclass of it. :class:`Losses` is the entry point of the public
functions for one framework: it registers the closed-form gradient with the
framework's autodiff, and its :meth:`Losses.closed` is the one place that chooses which
closed form (eager or compiled) serves a call. This base is NumPy's and
array-api-strict's: no autodiff, so the losses are their forward passes. torch, JAX
and TensorFlow subclass it in their ``*_autodiff`` modules.

A call goes down once: public function → ``Losses`` → the core (with the facts and
kernels as arguments) → kernels, and back.
"""

from __future__ import annotations

from typing import Any

from smoothloss import _core, _linear
from smoothloss._formulas import compute_dtype
from smoothloss._validation import is_integer
from smoothloss.backends._base import Framework, _numel

__all__ = ["Closed", "Losses", "refuse_class_weight"]


class Closed:
    """The dense loss's closed form with one binding's facts ``fw``: :meth:`forward`,
    :meth:`backward` and :meth:`forward_and_grad` as in :mod:`smoothloss._core`, and
    ``loop``, the loop over the chunked loss's row chunks (a Python ``for`` here; a
    ``lax.scan`` in JAX, a ``tf.while_loop`` in a TensorFlow graph). A compiled
    subclass runs its own compiled kernels (``compiled = True``)."""

    compiled = False

    def __init__(self, fw: Framework, loop: Any = _linear.python_loop) -> None:
        self.fw = fw
        self.loop = loop

    def __repr__(self) -> str:
        return f"<{type(self).__name__} for {self.fw.name}>"

    def forward(self, logits: Any, targets: Any, weight: Any, opts: _core.Options) -> Any:
        """:func:`smoothloss._core.forward`: ``(loss, stats, scale)``."""
        return _core.forward(self.fw, logits, targets, weight, opts)

    def backward(self, *args: Any) -> Any:
        """:func:`smoothloss._core.backward`."""
        return _core.backward(self.fw, *args)

    def chunk_forward_and_grad(
        self, z: Any, y: Any, weight: Any, opts: _core.Options, scale: Any, cotangent: Any
    ) -> tuple[Any, Any, Any]:
        """``(loss, stats, g)`` of one chunk of the chunked linear loss: its logits ``z``
        (made for this step alone: overwritten where the kernels work in place), integer
        labels ``y``, per-row ``opts``, and the logits' gradient at ``cotangent`` with the
        whole loss's reduction ``scale``. Where the kernels work in place (and there is
        no softcap, and z is its compute dtype), the gradient takes z's place: one
        C×V buffer a chunk; else the forward, then the backward."""
        if self.fw.kernels.overwrites and self.keeps_exp(z, y, opts):
            return _core.forward_and_grad_in_place(self.fw, z, y, weight, opts, scale, cotangent)
        loss, stats, _ = self.forward(z, y, weight, opts)
        g = self.backward(z, y, weight, opts, stats, scale, None, cotangent, (True, False, False))[0]
        return loss, stats, g

    def keeps_exp(self, logits: Any, targets: Any, opts: _core.Options) -> bool:
        """Whether a call's logits' gradient can be made from the forward's exponentials
        (:func:`smoothloss._core.exp_grad_terms`): integer labels, logits that are their
        own compute dtype (so the exponentials are no larger than they are), no softcap."""
        fw = self.fw
        return (fw.dtype_fact(is_integer, targets.dtype) and opts.softcap is None
                and fw.dtype_fact(compute_dtype, logits.dtype) == logits.dtype)

    def forward_and_grad(self, logits: Any, targets: Any, weight: Any, opts: _core.Options) -> Any:
        """``(loss, d loss/d logits)`` at cotangent 1 (a compiled closed form: its two kernels)."""
        if self.compiled:
            loss, stats, scale = self.forward(logits, targets, weight, opts)
            return loss, self.backward(logits, targets, weight, opts, stats, scale, loss, 1.0)[0]
        return _core.forward_and_grad(self.fw, logits, targets, weight, opts)


def refuse_class_weight(class_weight: Any) -> None:
    """A binding whose chunked linear loss takes no class weight refuses one."""
    if class_weight is not None:
        raise NotImplementedError(
            "class_weight in linear_cross_entropy is implemented for torch and NumPy only (not yet here)"
        )


class Losses:
    """One framework's loss entry points; this base has no autodiff."""

    def __init__(self, fw: Framework, eager: Closed | None = None) -> None:
        self.fw = fw
        self.eager = Closed(fw) if eager is None else eager

    def __repr__(self) -> str:
        return f"<smoothloss losses for {self.fw.name}>"

    def closed(self, like: Any, numel: Any, **signature: Any) -> Closed:
        """The closed form that serves a call on ``numel`` logits of ``like``'s kind (the
        path table of docs/transforms.md; here always the eager one)."""
        return self.eager

    def cross_entropy(self, logits: Any, targets: Any, weight: Any, opts: _core.Options) -> Any:
        """The dense loss, its gradient registered where the framework has autodiff."""
        return self.eager.forward(logits, targets, weight, opts)[0]

    def cross_entropy_and_grad(self, logits: Any, targets: Any, weight: Any, opts: _core.Options) -> tuple[Any, Any]:
        """``(loss, d loss/d logits)`` of the dense loss from the closed form (the gradient
        of the sum of the per-position losses for ``"none"``), without autodiff."""
        closed = self.closed(logits, _numel(logits), targets=targets, weight=weight, opts=opts)
        return closed.forward_and_grad(logits, targets, weight, opts)

    def linear_closed(self, hidden: Any, weight: Any, opts: _core.Options, chunk: int) -> Closed:
        """The closed form of each chunk of the chunked linear loss."""
        return self.closed(hidden, chunk * int(weight.shape[0]), chunked=True, opts=opts)

    def linear_cross_entropy(
        self, hidden: Any, weight: Any, bias: Any, labels: Any, opts: _core.Options, chunk: int,
        class_weight: Any = None,
    ) -> Any:
        """The chunked linear loss, its gradient registered where the framework has autodiff."""
        closed = _linear.with_class_weight(self.linear_closed(hidden, weight, opts, chunk), class_weight)
        return _linear.chunked_forward(closed, hidden, weight, bias, labels, opts, chunk)[0]

    def linear_cross_entropy_and_grad(
        self, hidden: Any, weight: Any, bias: Any, labels: Any, opts: _core.Options, chunk: int
    ) -> tuple[Any, tuple[Any, Any, Any]]:
        """``(loss, (d_hidden, d_weight, d_bias))`` of the chunked linear loss (the
        gradients of the sum of the per-row losses for ``"none"``), without autodiff."""
        closed = self.linear_closed(hidden, weight, opts, chunk)
        loss, stats, scale, grads = _linear.chunked_forward(
            closed, hidden, weight, bias, labels, opts, chunk, (True, True, True)
        )
        if grads is None:  # reduction="none": a second pass, at cotangent 1 per row
            grads = _linear.chunked_backward(closed, hidden, weight, bias, labels, opts, chunk, stats, scale, 1.0)
        return loss, grads
