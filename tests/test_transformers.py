"""smoothloss.transformers against Hugging Face Transformers.

* ``LabelSmoother`` against ``transformers.trainer_pt_utils.LabelSmoother``: values and
  gradients (float32, 1e-6) with padding, ``shift_labels``, ``num_items_in_batch`` and
  each kind of model output.
* ``causal_lm_loss`` against the label-smoothed ``ForCausalLMLoss`` written out in
  float64 here, and against transformers' own ``ForCausalLMLoss`` at ε = 0.
* Three ``Trainer`` steps with gradient accumulation: the logged losses with the
  built-in smoother, with ``LabelSmoother`` swapped in and with ``compute_loss_func``.

Tests that need transformers (or, for the Trainer, accelerate) skip when it is missing.
"""

from __future__ import annotations

import dataclasses
import inspect
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

from smoothloss.transformers import LabelSmoother, causal_lm_loss  # noqa: E402

NO_TRANSFORMERS = "transformers is not installed (pip install transformers, or smoothloss[test])"
V = 11  # classes


def _transformers():
    return pytest.importorskip("transformers", reason=NO_TRANSFORMERS)


def _batch(seed: int, shape=(3, 7), dtype=torch.float32):
    """Random logits (shape + (V,)) and labels with -100 padding at the end of each row
    and at one inner position."""
    g = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(*shape, V, generator=g)).to(dtype)
    labels = torch.randint(0, V, shape, generator=g)
    if len(shape) == 2:
        labels[0, -3:] = -100
        labels[1, 2] = -100
        labels[2, 0] = -100
    else:
        labels[::3] = -100
    return logits, labels


def _value_and_grad(fn, logits, *args, **kwargs):
    x = logits.detach().clone().requires_grad_(True)
    loss = fn(x, *args, **kwargs)
    (grad,) = torch.autograd.grad(loss, x)
    return loss.detach(), grad


def _close(ours, theirs, tol=1e-6):
    torch.testing.assert_close(ours, theirs, rtol=tol, atol=tol)


# --- LabelSmoother -------------------------------------------------------------------


def test_label_smoother_has_transformers_fields_and_call():
    tf = _transformers()
    from transformers.trainer_pt_utils import LabelSmoother as Theirs

    ours = [(f.name, f.default) for f in dataclasses.fields(LabelSmoother)]
    assert ours == [(f.name, f.default) for f in dataclasses.fields(Theirs)]
    assert repr(LabelSmoother(epsilon=0.2)) == repr(Theirs(epsilon=0.2))
    call = list(inspect.signature(LabelSmoother.__call__).parameters.items())
    theirs_call = list(inspect.signature(Theirs.__call__).parameters.items())
    assert [(n, p.default) for n, p in call] == [(n, p.default) for n, p in theirs_call], tf.__version__


@pytest.mark.parametrize("epsilon", [0.0, 0.1])
@pytest.mark.parametrize("shift_labels", [False, True])
@pytest.mark.parametrize("num_items", [None, "int", "tensor"])
def test_label_smoother_matches_transformers(epsilon, shift_labels, num_items):
    _transformers()
    from transformers.trainer_pt_utils import LabelSmoother as Theirs

    logits, labels = _batch(1)
    count = int((labels[..., 1:] if shift_labels else labels).ne(-100).sum()) + 5  # e.g. other micro-batches
    n = {None: None, "int": count, "tensor": torch.tensor(count)}[num_items]

    def run(smoother):
        return _value_and_grad(
            lambda x: smoother({"logits": x}, labels, shift_labels=shift_labels, num_items_in_batch=n), logits
        )

    ours, theirs = run(LabelSmoother(epsilon=epsilon)), run(Theirs(epsilon=epsilon))
    assert ours[0].dtype == theirs[0].dtype == torch.float32
    _close(ours[0], theirs[0])
    _close(ours[1], theirs[1])


@pytest.mark.parametrize("form", ["dict", "ModelOutput", "tuple"])
def test_label_smoother_reads_each_model_output(form):
    _transformers()
    from transformers.modeling_outputs import CausalLMOutput
    from transformers.trainer_pt_utils import LabelSmoother as Theirs

    logits, labels = _batch(2)
    wrap = {
        "dict": lambda x: {"logits": x, "past_key_values": None},
        "ModelOutput": lambda x: CausalLMOutput(logits=x),
        "tuple": lambda x: (x, None),
    }[form]
    for shift in (False, True):
        ours = _value_and_grad(lambda x: LabelSmoother(0.1)(wrap(x), labels, shift_labels=shift), logits)
        theirs = _value_and_grad(lambda x: Theirs(0.1)(wrap(x), labels, shift_labels=shift), logits)
        _close(ours[0], theirs[0])
        _close(ours[1], theirs[1])


def test_label_smoother_classification_and_trailing_label_axis():
    """(N, V) logits with (N,) or (N, 1) labels, as for a sequence classifier."""
    _transformers()
    from transformers.trainer_pt_utils import LabelSmoother as Theirs

    logits, labels = _batch(3, shape=(9,))
    for y in (labels, labels[:, None]):
        ours = _value_and_grad(lambda x: LabelSmoother(0.1)((x,), y), logits)
        theirs = _value_and_grad(lambda x: Theirs(0.1)((x,), y), logits)
        _close(ours[0], theirs[0])
        _close(ours[1], theirs[1])


def test_label_smoother_is_the_core_uniform_convention():
    """The maths is smoothloss.cross_entropy's "uniform" rule with label_smoothing=ε."""
    import smoothloss

    logits, labels = _batch(4, dtype=torch.float64)
    ours = LabelSmoother(epsilon=0.3)({"logits": logits}, labels)
    core = smoothloss.cross_entropy(logits, labels, label_smoothing=0.3, convention="uniform", ignore_index=-100)
    _close(ours, core, 1e-12)


def test_label_smoother_deliberate_differences():
    _transformers()
    from transformers.trainer_pt_utils import LabelSmoother as Theirs

    logits, labels = _batch(5)
    padded = torch.full_like(labels, -100)
    # every label padded: transformers divides 0 by 0
    assert torch.isnan(Theirs(0.1)({"logits": logits}, padded))
    ours, grad = _value_and_grad(lambda x: LabelSmoother(0.1)({"logits": x}, padded), logits)
    assert ours.item() == 0.0 and not grad.any()
    assert LabelSmoother(0.1)({"logits": logits}, padded, num_items_in_batch=torch.tensor(0)).item() == 0.0
    # a negative label other than ignore_index: transformers clamps it to class 0
    bad = labels.clone()
    bad[0, 0] = -1
    assert torch.isfinite(Theirs(0.1)({"logits": logits}, bad))
    with pytest.raises(ValueError, match="labels must lie in"):
        LabelSmoother(0.1)({"logits": logits}, bad)
    with pytest.raises(ValueError, match="epsilon must lie in"):
        LabelSmoother(epsilon=1.5)


# --- causal_lm_loss --------------------------------------------------------------------


def _reference_causal(logits, labels, eps, num_items=None):
    """transformers' ForCausalLMLoss with PyTorch's label smoothing, written out in
    float64: labels padded on the right and shifted by one, (1-ε)·nll + ε·mean_c(-log p_c)
    per non-ignored token, the mean over them or the sum over num_items_in_batch."""
    x = logits.double()
    y = torch.nn.functional.pad(labels, (0, 1), value=-100)[..., 1:]
    logp = torch.log_softmax(x, dim=-1)
    keep = y != -100
    nll = -logp.gather(-1, y.clamp(min=0)[..., None])[..., 0]
    per_token = torch.where(keep, (1 - eps) * nll + eps * (-logp).mean(-1), torch.zeros_like(nll))
    return per_token.sum() / (keep.sum() if num_items is None else num_items)


@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("num_items", [None, "int", "tensor"])
def test_causal_lm_loss_matches_float64_reference(eps, num_items):
    logits, labels = _batch(6, shape=(4, 9))
    count = int(labels[..., 1:].ne(-100).sum()) + 7
    n = {None: None, "int": count, "tensor": torch.tensor(count)}[num_items]
    ours, grad = _value_and_grad(lambda x: causal_lm_loss(eps)({"logits": x}, labels, num_items_in_batch=n), logits)
    ref, ref_grad = _value_and_grad(lambda x: _reference_causal(x, labels, eps, n), logits.double())
    assert ours.dtype == torch.float32
    _close(ours.double(), ref)
    _close(grad.double(), ref_grad)
    assert not grad[:, -1].any()  # the last position predicts nothing


def test_causal_lm_loss_sums_over_gradient_accumulation():
    """Micro-batch losses over the accumulated token count add up to the token mean of
    the whole batch, however the tokens fall into micro-batches."""
    logits, labels = _batch(7, shape=(6, 8))
    labels[:2, 2:] = -100  # a micro-batch with few tokens
    loss = causal_lm_loss(0.1)
    n = labels[..., 1:].ne(-100).sum()
    parts = sum(loss((logits[i : i + 2],), labels[i : i + 2], num_items_in_batch=n) for i in (0, 2, 4))
    _close(parts, loss((logits,), labels))


@pytest.mark.parametrize("num_items", [None, "tensor"])
def test_causal_lm_loss_without_smoothing_is_for_causal_lm_loss(num_items):
    _transformers()
    from transformers.loss.loss_utils import ForCausalLMLoss

    logits, labels = _batch(8, shape=(3, 10))
    n = None if num_items is None else labels[..., 1:].ne(-100).sum()
    ours = _value_and_grad(lambda x: causal_lm_loss(0.0)({"logits": x}, labels, num_items_in_batch=n), logits)
    theirs = _value_and_grad(lambda x: ForCausalLMLoss(x, labels, V, num_items_in_batch=n), logits)
    _close(ours[0], theirs[0])
    _close(ours[1], theirs[1])


def _shifted(labels):
    """Labels shifted as the Trainer does for context parallelism: pad one -100 on the
    right, drop the first (same length as the logits)."""
    return torch.nn.functional.pad(labels, (0, 1), value=-100)[..., 1:].contiguous()


def _reference_shifted(logits, shift_labels, eps, num_items=None):
    """ForCausalLMLoss given shift_labels, with PyTorch's label smoothing, in float64:
    every position of the logits against shift_labels as they are, (1-ε)·nll +
    ε·mean_c(-log p_c) per non-ignored label, the mean or the sum over num_items."""
    logp = torch.log_softmax(logits.double(), dim=-1).reshape(-1, logits.shape[-1])
    y = shift_labels.reshape(-1)
    keep = y != -100
    nll = -logp.gather(-1, y.clamp(min=0)[:, None])[:, 0]
    per_token = torch.where(keep, (1 - eps) * nll + eps * (-logp).mean(-1), torch.zeros_like(nll))
    return per_token.sum() / (keep.sum() if num_items is None else num_items)


@pytest.mark.parametrize("num_items", [None, "tensor"])
def test_causal_lm_loss_shift_labels_is_for_causal_lm_loss(num_items):
    """At ε = 0, shift_labels= gives ForCausalLMLoss's value and gradient, and ``labels``
    is then not read (here: labels that would give another loss, and None)."""
    _transformers()
    from transformers.loss.loss_utils import ForCausalLMLoss

    logits, labels = _batch(10, shape=(3, 10))
    shift = _shifted(labels)
    shift[1, 4] = -100  # a label the plain shift would train on
    n = None if num_items is None else shift.ne(-100).sum() + 3
    decoy = torch.randint(0, V, labels.shape)
    theirs = _value_and_grad(lambda x: ForCausalLMLoss(x, decoy, V, num_items_in_batch=n, shift_labels=shift), logits)
    for given in (decoy, None):
        ours = _value_and_grad(
            lambda x, given=given: causal_lm_loss(0.0)({"logits": x}, given, num_items_in_batch=n, shift_labels=shift),
            logits,
        )
        _close(ours[0], theirs[0])
        _close(ours[1], theirs[1])
    # flattened shift_labels, as ForCausalLMLoss's view(-1) takes them
    flat = _value_and_grad(
        lambda x: causal_lm_loss(0.0)((x,), None, num_items_in_batch=n, shift_labels=shift.view(-1)), logits
    )
    _close(flat[0], theirs[0])
    # without them, the plain shift: another number here
    plain = causal_lm_loss(0.0)({"logits": logits}, labels, num_items_in_batch=n)
    assert abs(plain.item() - theirs[0].item()) > 1e-4


@pytest.mark.parametrize("eps", [0.1, 0.3])
@pytest.mark.parametrize("num_items", [None, "int"])
def test_causal_lm_loss_shift_labels_matches_float64_reference(eps, num_items):
    logits, labels = _batch(11, shape=(4, 9))
    shift = _shifted(labels)
    n = None if num_items is None else int(shift.ne(-100).sum()) + 5
    ours, grad = _value_and_grad(lambda x: causal_lm_loss(eps)({"logits": x}, None, num_items_in_batch=n,
                                                                shift_labels=shift), logits)
    ref, ref_grad = _value_and_grad(lambda x: _reference_shifted(x, shift, eps, n), logits.double())
    _close(ours.double(), ref)
    _close(grad.double(), ref_grad)
    # the same numbers as the plain shift of the unshifted labels
    _close(ours, causal_lm_loss(eps)({"logits": logits}, labels, num_items_in_batch=n))


def test_causal_lm_loss_shift_labels_of_a_context_parallel_split():
    """Context parallelism splits the sequence after shifting: each chunk's loss with its
    own shift_labels, over the whole batch's count, adds up to the unsplit loss."""
    logits, labels = _batch(12, shape=(3, 12))
    shift = _shifted(labels)
    n = shift.ne(-100).sum()
    loss = causal_lm_loss(0.1)
    parts = sum(
        loss((logits[:, i : i + 4],), None, num_items_in_batch=n, shift_labels=shift[:, i : i + 4]) for i in (0, 4, 8)
    )
    _close(parts, loss((logits,), labels))


def test_causal_lm_loss_has_the_compute_loss_func_signature():
    loss = causal_lm_loss(label_smoothing=0.2, ignore_index=0)
    assert list(inspect.signature(loss).parameters) == ["outputs", "labels", "num_items_in_batch", "shift_labels"]
    assert inspect.signature(loss).parameters["shift_labels"].default is None
    assert repr(loss) == "causal_lm_loss(label_smoothing=0.2, ignore_index=0)"
    logits, _ = _batch(9)
    with pytest.raises(ValueError, match="labels are None"):
        loss({"logits": logits}, None)
    with pytest.raises(ValueError, match="label_smoothing must lie in"):
        causal_lm_loss(label_smoothing=-0.1)


def test_importing_smoothloss_imports_neither_torch_nor_transformers():
    code = (
        "import sys, smoothloss; a = {m for m in ('torch', 'transformers') if m in sys.modules}; "
        "import smoothloss.transformers; b = 'transformers' in sys.modules; print(sorted(a), b)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[] False"


# --- Trainer ---------------------------------------------------------------------------

SEQ, N_EXAMPLES, VOCAB = 12, 24, 50


def _dataset():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, VOCAB, (N_EXAMPLES, SEQ), generator=g)
    lengths = torch.randint(3, SEQ + 1, (N_EXAMPLES,), generator=g)  # right padding of varied length
    rows = []
    for i in range(N_EXAMPLES):
        mask = (torch.arange(SEQ) < lengths[i]).long()
        rows.append({"input_ids": ids[i], "attention_mask": mask, "labels": ids[i].masked_fill(mask == 0, -100)})
    return rows


def _model(family):
    import transformers as tf

    torch.manual_seed(0)
    if family == "gpt2":
        config = tf.GPT2Config(
            n_layer=1, n_head=2, n_embd=16, vocab_size=VOCAB, n_positions=32, bos_token_id=0, eos_token_id=0,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        )
        return tf.GPT2LMHeadModel(config)
    config = tf.LlamaConfig(
        num_hidden_layers=1, hidden_size=16, intermediate_size=32, num_attention_heads=2, num_key_value_heads=2,
        vocab_size=VOCAB, max_position_embeddings=32, bos_token_id=0, eos_token_id=0, pad_token_id=0,
    )
    return tf.LlamaForCausalLM(config)


def _train(family, mode, tmp_path):
    import transformers as tf

    args = tf.TrainingArguments(
        output_dir=str(tmp_path / f"{family}-{mode}"), use_cpu=True, report_to=[], max_steps=3, seed=0,
        per_device_train_batch_size=4, gradient_accumulation_steps=2, label_smoothing_factor=0.1,
        save_strategy="no", logging_steps=1, disable_tqdm=True,
    )
    extra = {"compute_loss_func": causal_lm_loss(label_smoothing=0.1)} if mode == "compute_loss_func" else {}
    trainer = tf.Trainer(model=_model(family), args=args, train_dataset=_dataset(), **extra)
    if mode == "label_smoother":
        assert isinstance(trainer.label_smoother, tf.trainer_pt_utils.LabelSmoother)
        trainer.label_smoother = LabelSmoother(epsilon=args.label_smoothing_factor)
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    return [entry["loss"] for entry in logs], [entry["grad_norm"] for entry in logs]


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_trainer_logs_the_same_losses(family, tmp_path):
    """GPT-2's class name has no loss type, so the Trainer counts num_items_in_batch over
    the unshifted labels; Llama's maps to ForCausalLMLoss and is counted over labels[..., 1:].
    Either way the built-in smoother and both smoothloss routes get the same count."""
    _transformers()
    pytest.importorskip("accelerate", reason="transformers.Trainer needs accelerate (pip install accelerate)")
    builtin_loss, builtin_norm = _train(family, "builtin", tmp_path)
    assert len(builtin_loss) == 3
    for mode in ("label_smoother", "compute_loss_func"):
        loss, norm = _train(family, mode, tmp_path)
        torch.testing.assert_close(loss, builtin_loss, rtol=1e-5, atol=1e-5, msg=mode)
        torch.testing.assert_close(norm, builtin_norm, rtol=1e-4, atol=1e-5, msg=mode)
