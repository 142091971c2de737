"""Mixup / CutMix: soft targets, image mixing, the sampler and mixup_cross_entropy.

The expectations are timm's definitions (``timm/data/mixup.py`` of timm 1.0.31, and the
CutMix boxes of timm <= 1.0.28 behind ``box_rule="timm<=1.0.28"``) written out below in
NumPy: ``one_hot``/``mixup_target`` values, boxes and λ from ``rand_bbox`` given the
same draws, and batches mixed in place by slicing exactly as timm's ``Mixup`` does.
timm draws from the global NumPy state (``np.random.rand``, ``beta``, ``randint``);
the reference draws the same quantities in the same order from a ``Generator``
(``random``, ``beta``, ``integers``), so a seeded smoothloss ``Mixup`` must reproduce it.

Where timm is installed (``pip install --no-deps timm``; ``import timm`` itself may fail
on a clashing torchvision), its own ``timm/data/mixup.py`` is also loaded as a file and
run side by side, draw for draw, with smoothloss drawing from the same legacy NumPy state.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import inspect
import math
import pathlib

import numpy as np
import pytest

import smoothloss
from smoothloss._mixing import cutmix_bbox_and_lam, rand_bbox, rand_bbox_minmax
from smoothloss._mixup import FastCollateMixup, MixupOptions, MixupParams
from smoothloss.backends import framework_name
from smoothloss.testing import reference_cross_entropy, rel_err


# ============================================================================ timm, in NumPy
def timm_one_hot(labels, num_classes, on_value=1.0, off_value=0.0):
    """timm one_hot: a (B, K) float32 array of off_value with on_value at each label."""
    out = np.full((len(labels), num_classes), off_value, dtype=np.float32)
    out[np.arange(len(labels)), labels] = on_value
    return out


def timm_mixup_target(labels, num_classes, lam=1.0, smoothing=0.0):
    """timm mixup_target: smooth with ε/K, then λ·y + (1-λ)·y.flip(0)."""
    off = smoothing / num_classes
    on = 1.0 - smoothing + off
    y1 = timm_one_hot(labels, num_classes, on, off)
    y2 = timm_one_hot(labels[::-1], num_classes, on, off)
    return y1 * lam + y2 * (1.0 - lam)


NEW_BOXES, OLD_BOXES = "timm>=1.0.29", "timm<=1.0.28"


def timm_rand_bbox(rng, img_shape, lam, rule=NEW_BOXES):
    """A centre (cy, cx) uniform over the image; the cut extends cut//2 before it and,
    since timm 1.0.29, cut - cut//2 from it on (before: cut//2), then clipped."""
    ratio = np.sqrt(1 - lam)
    img_h, img_w = img_shape[-2:]
    cut_h, cut_w = int(img_h * ratio), int(img_w * ratio)
    cy = rng.integers(0, img_h)
    cx = rng.integers(0, img_w)
    end_h, end_w = (cut_h // 2, cut_w // 2) if rule == OLD_BOXES else ((cut_h + 1) // 2, (cut_w + 1) // 2)
    return (
        np.clip(cy - cut_h // 2, 0, img_h), np.clip(cy + end_h, 0, img_h),
        np.clip(cx - cut_w // 2, 0, img_w), np.clip(cx + end_w, 0, img_w),
    )


def timm_rand_bbox_minmax(rng, img_shape, minmax, rule=NEW_BOXES):
    """Sides uniform in [int(n·min), int(n·max)); the corner in [0, n - side], since timm
    1.0.29 (before: [0, n - side))."""
    img_h, img_w = img_shape[-2:]
    extra = 0 if rule == OLD_BOXES else 1
    cut_h = rng.integers(int(img_h * minmax[0]), int(img_h * minmax[1]))
    cut_w = rng.integers(int(img_w * minmax[0]), int(img_w * minmax[1]))
    yl = rng.integers(0, img_h - cut_h + extra)
    xl = rng.integers(0, img_w - cut_w + extra)
    return yl, yl + cut_h, xl, xl + cut_w


def timm_cutmix_bbox_and_lam(rng, img_shape, lam, ratio_minmax, correct_lam, rule=NEW_BOXES):
    if ratio_minmax is not None:
        box = timm_rand_bbox_minmax(rng, img_shape, ratio_minmax, rule)
    else:
        box = timm_rand_bbox(rng, img_shape, lam, rule)
    if correct_lam or ratio_minmax is not None:
        yl, yu, xl, xu = box
        lam = 1.0 - (yu - yl) * (xu - xl) / float(img_shape[-2] * img_shape[-1])
    return box, lam


class TimmMixupReference:
    """timm's Mixup on an NCHW NumPy batch, mixing in place by slicing.

    The one extension: odd batches. timm asserts an even batch; here the middle
    example pairs with itself, and in "pair" mode it gets λ = 1 (no draw).
    """

    def __init__(self, rng, mixup_alpha=1.0, cutmix_alpha=0.0, cutmix_minmax=None, prob=1.0,
                 switch_prob=0.5, mode="batch", correct_lam=True, label_smoothing=0.1, num_classes=10,
                 box_rule=NEW_BOXES):
        self.rng, self.box_rule = rng, box_rule
        self.mixup_alpha = mixup_alpha
        self.cutmix_alpha = 1.0 if cutmix_minmax is not None else cutmix_alpha
        self.cutmix_minmax = cutmix_minmax
        self.prob, self.switch_prob, self.mode = prob, switch_prob, mode
        self.correct_lam, self.smoothing, self.num_classes = correct_lam, label_smoothing, num_classes

    def params_per_elem(self, n):
        rng, ma, ca = self.rng, self.mixup_alpha, self.cutmix_alpha
        use_cutmix = np.zeros(n, dtype=bool)
        if ma > 0 and ca > 0:
            use_cutmix = rng.random(n) < self.switch_prob
            from_cutmix = rng.beta(ca, ca, size=n)  # timm's np.where evaluates the cutmix draw first
            from_mixup = rng.beta(ma, ma, size=n)
            lam_mix = np.where(use_cutmix, from_cutmix, from_mixup)
        elif ma > 0:
            lam_mix = rng.beta(ma, ma, size=n)
        else:
            use_cutmix = np.ones(n, dtype=bool)
            lam_mix = rng.beta(ca, ca, size=n)
        applied = rng.random(n) < self.prob
        return np.where(applied, lam_mix.astype(np.float32), np.ones(n, np.float32)), use_cutmix

    def params_per_batch(self):
        rng, ma, ca = self.rng, self.mixup_alpha, self.cutmix_alpha
        if not rng.random() < self.prob:
            return 1.0, False
        if ma > 0 and ca > 0:
            use_cutmix = rng.random() < self.switch_prob
            return float(rng.beta(ca, ca) if use_cutmix else rng.beta(ma, ma)), bool(use_cutmix)
        if ma > 0:
            return float(rng.beta(ma, ma)), False
        return float(rng.beta(ca, ca)), True

    def _cut(self, shape, lam):
        return timm_cutmix_bbox_and_lam(self.rng, shape, lam, self.cutmix_minmax, self.correct_lam, self.box_rule)

    def mix_elem(self, x):
        B = len(x)
        lam_batch, use_cutmix = self.params_per_elem(B)
        x_orig = x.copy()
        for i in range(B):
            j = B - i - 1
            lam = lam_batch[i]
            if lam != 1.0:
                if use_cutmix[i]:
                    (yl, yh, xl, xh), lam = self._cut(x[i].shape, lam)
                    x[i][:, yl:yh, xl:xh] = x_orig[j][:, yl:yh, xl:xh]
                    lam_batch[i] = lam
                else:
                    x[i] = x[i] * lam + x_orig[j] * (1 - lam)
        return lam_batch[:, None]

    def mix_pair(self, x):
        B = len(x)
        lam_batch, use_cutmix = self.params_per_elem(B // 2)
        x_orig = x.copy()
        for i in range(B // 2):
            j = B - i - 1
            lam = lam_batch[i]
            if lam != 1.0:
                if use_cutmix[i]:
                    (yl, yh, xl, xh), lam = self._cut(x[i].shape, lam)
                    x[i][:, yl:yh, xl:xh] = x_orig[j][:, yl:yh, xl:xh]
                    x[j][:, yl:yh, xl:xh] = x_orig[i][:, yl:yh, xl:xh]
                    lam_batch[i] = lam
                else:
                    x[i] = x[i] * lam + x_orig[j] * (1 - lam)
                    x[j] = x[j] * lam + x_orig[i] * (1 - lam)
        middle = np.ones(B % 2, np.float32)
        return np.concatenate((lam_batch, middle, lam_batch[::-1]))[:, None]

    def mix_batch(self, x):
        lam, use_cutmix = self.params_per_batch()
        if lam == 1.0:
            return 1.0
        if use_cutmix:
            (yl, yh, xl, xh), lam = self._cut(x.shape, lam)
            x[:, :, yl:yh, xl:xh] = x[::-1][:, :, yl:yh, xl:xh].copy()
        else:
            x_flipped = x[::-1] * (1.0 - lam)
            x *= lam
            x += x_flipped
        return lam

    def __call__(self, x, target):
        lam = {"elem": self.mix_elem, "pair": self.mix_pair, "batch": self.mix_batch}[self.mode](x)
        return x, timm_mixup_target(target, self.num_classes, lam, self.smoothing)


def to_layout(x_nchw, layout):
    return x_nchw if layout == "NCHW" else np.ascontiguousarray(x_nchw.transpose(0, 2, 3, 1))


def from_layout(x, layout):
    return x if layout == "NCHW" else x.transpose(0, 3, 1, 2)


def scalar(backend, value):
    """A 0-d array of the backend (the torch driver's asarray gives 0-d input shape (1,))."""
    a = backend.asarray(np.asarray(value))
    return a if a.ndim == 0 else smoothloss.backends.array_namespace(a).reshape(a, ())


def assert_native(backend, out, like):
    """The result lives in the backend's namespace and on the input's device."""
    assert framework_name(out) == framework_name(like)
    assert backend.device_of(out) == backend.device_of(like)


# ============================================================================ targets
@pytest.mark.parametrize("batch", [6, 5])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_mixup_target_matches_timm(backend, batch, smoothing):
    K = 7
    rng = np.random.default_rng(batch)
    labels = rng.integers(0, K, batch)
    y = backend.asarray(labels)
    # a Python λ for the batch
    out = backend.call(lambda y: smoothloss.mixup_target(y, K, lam=0.3, label_smoothing=smoothing), y)
    assert_native(backend, out, y)
    assert backend.dtype_name(out) == "float32"
    np.testing.assert_allclose(backend.to_numpy(out), timm_mixup_target(labels, K, 0.3, smoothing), rtol=1e-6)
    # λ per example, (B,) or timm's (B, 1), traced under jit / tf.function
    lam = rng.uniform(size=batch).astype(np.float32)
    expected = timm_mixup_target(labels, K, lam[:, None], smoothing)
    for shape in ((batch,), (batch, 1)):
        out = backend.call(
            lambda y, lam: smoothloss.mixup_target(y, K, lam=lam, label_smoothing=smoothing), y,
            backend.asarray(lam.reshape(shape)),
        )
        np.testing.assert_allclose(backend.to_numpy(out), expected, rtol=1e-6)
    np.testing.assert_allclose(backend.to_numpy(out).sum(-1), 1.0, rtol=1e-6)
    # λ = 1: the smoothed one-hot itself (timm's one_hot with ε/K off, 1-ε+ε/K on)
    plain = backend.to_numpy(smoothloss.mixup_target(y, K, label_smoothing=smoothing))
    np.testing.assert_array_equal(plain, timm_one_hot(labels, K, 1 - smoothing + smoothing / K, smoothing / K))
    if batch % 2:  # the middle example is its own partner: its target is not mixed
        np.testing.assert_allclose(backend.to_numpy(out)[batch // 2], plain[batch // 2], rtol=1e-6)


def test_mixup_target_with_index_and_dtype(backend):
    K, labels = 4, np.array([0, 1, 2, 3, 1])
    index = np.array([2, 0, 1, 4, 3])
    lam = np.array([1.0, 0.5, 0.0, 0.25, 0.75])
    out = backend.call(
        lambda y, i, lam: smoothloss.mixup_target(
            y, K, lam=lam, label_smoothing=0.2, index=i, dtype=backend.dtype("float64")
        ),
        backend.asarray(labels), backend.asarray(index), backend.asarray(lam),
    )
    q = np.full((5, K), 0.05)
    q[np.arange(5), labels] = 0.85
    expected = lam[:, None] * q + (1 - lam[:, None]) * q[index]
    assert backend.dtype_name(out) == "float64"
    np.testing.assert_allclose(backend.to_numpy(out), expected, rtol=1e-14)


# ============================================================================ boxes
class ScriptedDraws:
    """A stand-in Generator: ``integers`` returns the scripted values and records its ranges."""

    def __init__(self, values):
        self.values, self.ranges = list(values), []

    def integers(self, low, high, size=None):
        self.ranges.append((int(low), int(high)))
        value = self.values.pop(0)
        assert low <= value < high
        return np.int64(value)


@pytest.mark.parametrize(
    "shape, lam, centre, new_box, old_box",
    [
        ((8, 10), 0.75, (4, 5), (2, 6, 3, 8), (2, 6, 3, 7)),  # cut 4 × 5: rows 4±2; columns 5-2 .. 5+3 (5+2)
        ((9, 7), 0.84, (4, 3), (3, 6, 2, 4), (3, 5, 2, 4)),  # √0.16 = 0.4: cut 3 × 2
        ((8, 10), 0.75, (0, 9), (0, 2, 7, 10), (0, 2, 7, 10)),  # clipped at the borders
        ((32, 32), 0.19, (16, 16), (2, 30, 2, 30), (2, 30, 2, 30)),  # √0.81 = 0.9: even cut 28 → ±14
        ((5, 5), 0.99, (2, 2), (2, 2, 2, 2), (2, 2, 2, 2)),  # int(5·0.1) = 0: an empty box
    ],
)
def test_rand_bbox_given_draws(shape, lam, centre, new_box, old_box):
    for rule, box in ((NEW_BOXES, new_box), (OLD_BOXES, old_box)):
        draws = ScriptedDraws(centre)
        got = rand_bbox(shape, lam, rng=draws, box_rule=rule)
        assert tuple(int(v) for v in got) == box, rule
        assert draws.ranges == [(0, shape[0]), (0, shape[1])]  # timm: randint(0, H), randint(0, W)
        _, corrected = cutmix_bbox_and_lam(shape, lam, rng=ScriptedDraws(centre), box_rule=rule)
        y0, y1, x0, x1 = box
        assert corrected == 1.0 - (y1 - y0) * (x1 - x0) / (shape[0] * shape[1])
        _, kept = cutmix_bbox_and_lam(shape, lam, rng=ScriptedDraws(centre), correct_lam=False, box_rule=rule)
        assert kept == lam
    assert tuple(map(int, rand_bbox(shape, lam, rng=ScriptedDraws(centre)))) == new_box  # the default


def test_rand_bbox_unclipped_box_is_the_whole_cut():
    """Since timm 1.0.29 a box away from the borders is exactly int(H·√(1-λ)) × int(W·√(1-λ))."""
    shape, lam = (40, 30), 0.8
    cut = (int(40 * math.sqrt(0.2)), int(30 * math.sqrt(0.2)))  # 17 × 13: both odd
    y0, y1, x0, x1 = (int(v) for v in rand_bbox(shape, lam, rng=ScriptedDraws([20, 15])))
    assert (y1 - y0, x1 - x0) == cut
    y0, y1, x0, x1 = (int(v) for v in rand_bbox(shape, lam, rng=ScriptedDraws([20, 15]), box_rule=OLD_BOXES))
    assert (y1 - y0, x1 - x0) == (cut[0] - 1, cut[1] - 1)


def test_rand_bbox_minmax_given_draws():
    draws = ScriptedDraws([3, 5, 4, 1])  # cut_h, cut_w, y0, x0
    got = rand_bbox_minmax((10, 20), (0.2, 0.8), rng=draws)
    assert tuple(int(v) for v in got) == (4, 7, 1, 6)
    assert draws.ranges == [(2, 8), (4, 16), (0, 8), (0, 16)]  # the corner may reach H - cut_h
    draws = ScriptedDraws([3, 5, 4, 1])
    got = rand_bbox_minmax((10, 20), (0.2, 0.8), rng=draws, box_rule=OLD_BOXES)
    assert tuple(int(v) for v in got) == (4, 7, 1, 6)
    assert draws.ranges == [(2, 8), (4, 16), (0, 7), (0, 15)]
    # now a box may touch the bottom-right corner
    got = rand_bbox_minmax((10, 20), (0.2, 0.8), rng=ScriptedDraws([3, 5, 7, 15]))
    assert tuple(int(v) for v in got) == (7, 10, 15, 20)
    # minmax always corrects λ, even with correct_lam=False
    draws = ScriptedDraws([3, 5, 4, 1])
    _, lam = cutmix_bbox_and_lam((10, 20), 0.5, rng=draws, ratio_minmax=(0.2, 0.8), correct_lam=False)
    assert lam == 1.0 - 15 / 200


@pytest.mark.parametrize("rule", [NEW_BOXES, OLD_BOXES])
def test_rand_bbox_matches_timm_draw_for_draw(rule):
    for seed in range(20):
        lam = float(np.random.default_rng(100 + seed).uniform())
        ours = rand_bbox((13, 17), lam, rng=np.random.default_rng(seed), box_rule=rule)
        theirs = timm_rand_bbox(np.random.default_rng(seed), (13, 17), lam, rule)
        assert tuple(map(int, ours)) == tuple(map(int, theirs))
        ours = rand_bbox_minmax((13, 17), (0.2, 0.9), rng=np.random.default_rng(seed), box_rule=rule)
        theirs = timm_rand_bbox_minmax(np.random.default_rng(seed), (13, 17), (0.2, 0.9), rule)
        assert tuple(map(int, ours)) == tuple(map(int, theirs))


# ============================================================================ Mixup vs timm
CONFIGS = {
    "mixup": dict(mixup_alpha=0.8),
    "cutmix": dict(mixup_alpha=0.0, cutmix_alpha=1.0),
    "switch": dict(mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5, prob=0.8),
    "minmax": dict(mixup_alpha=0.0, cutmix_minmax=(0.2, 0.8)),
    "uncorrected": dict(mixup_alpha=0.0, cutmix_alpha=1.0, correct_lam=False),
}
H, W, C, K = 8, 10, 2, 5


def _traced_step(layout, smoothing):
    def step(x, y, lam, box, cut):
        mixed = smoothloss.mix_images(x, lam=lam, box=box, cutmix=cut, layout=layout)
        return mixed, smoothloss.mixup_target(y, K, lam=lam, label_smoothing=smoothing)

    return step


def _run(backend, mix, x, y, step):
    """Eager backends call Mixup; traced ones draw with sample() and mix inside jit."""
    if not backend.traced:
        return mix(x, y)
    p = mix.sample(int(x.shape[0]), tuple(x.shape))
    lam, cut = np.asarray(p.lam, np.float32), np.asarray(p.cutmix)
    if lam.ndim == 0:
        lam, cut = scalar(backend, lam), scalar(backend, cut)
    else:
        lam, cut = backend.asarray(lam), backend.asarray(cut)
    return backend.call(step, x, y, lam, backend.asarray(p.box), cut)


@pytest.mark.parametrize("batch", [6, 5])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("mode", ["batch", "pair", "elem"])
def test_mixup_matches_timm(backend, mode, layout, batch):
    data = np.random.default_rng(7)
    step = _traced_step(layout, 0.1)
    for name, config in CONFIGS.items():
        for seed in (0, 1) if not backend.traced else (0,):  # each traced call compiles anew
            x_np = data.normal(size=(batch, C, H, W)).astype(np.float32)
            y_np = data.integers(0, K, batch)
            reference = TimmMixupReference(np.random.default_rng(seed), mode=mode, num_classes=K, **config)
            x_ref, t_ref = reference(x_np.copy(), y_np)
            mix = smoothloss.Mixup(mode=mode, num_classes=K, seed=seed, layout=layout, **config)
            x_in, y_in = backend.asarray(to_layout(x_np, layout)), backend.asarray(y_np)
            mixed, targets = _run(backend, mix, x_in, y_in, step)
            where = f"{name}, seed {seed}"
            assert_native(backend, mixed, x_in)
            assert backend.dtype_name(mixed) == "float32" and backend.dtype_name(targets) == "float32", where
            assert tuple(mixed.shape) == tuple(x_in.shape), where
            np.testing.assert_allclose(
                from_layout(backend.to_numpy(mixed), layout), x_ref, rtol=2e-6, atol=2e-6, err_msg=where
            )
            np.testing.assert_allclose(backend.to_numpy(targets), t_ref, rtol=2e-6, atol=1e-7, err_msg=where)
            np.testing.assert_array_equal(backend.to_numpy(x_in), to_layout(x_np, layout))  # input untouched
            if batch % 2:  # the middle example is mixed with itself: unchanged up to rounding
                middle = from_layout(backend.to_numpy(mixed), layout)[batch // 2]
                np.testing.assert_allclose(middle, x_np[batch // 2], rtol=1e-6, atol=1e-7, err_msg=where)


@pytest.mark.parametrize("mode", ["batch", "pair", "elem"])
def test_mixup_old_boxes_match_timm_up_to_1_0_28(mode):
    """box_rule="timm<=1.0.28" gives the boxes (and λ) of timm before 1.0.29, draw for draw."""
    data = np.random.default_rng(17)
    differs = 0
    for name, config in CONFIGS.items():
        for seed in range(3):
            x_np = data.normal(size=(6, C, H, W)).astype(np.float32)
            y_np = data.integers(0, K, 6)
            reference = TimmMixupReference(
                np.random.default_rng(seed), mode=mode, num_classes=K, box_rule=OLD_BOXES, **config
            )
            x_ref, t_ref = reference(x_np.copy(), y_np)
            mixed, targets = smoothloss.Mixup(mode=mode, num_classes=K, seed=seed, box_rule=OLD_BOXES, **config)(
                x_np, y_np
            )
            np.testing.assert_allclose(mixed, x_ref, rtol=2e-6, atol=2e-6, err_msg=f"{name}, seed {seed}")
            np.testing.assert_allclose(targets, t_ref, rtol=2e-6, atol=1e-7, err_msg=f"{name}, seed {seed}")
            current, _ = smoothloss.Mixup(mode=mode, num_classes=K, seed=seed, **config)(x_np, y_np)
            differs += not np.array_equal(current, mixed)
    assert differs  # the two rules do give different boxes on these draws


def test_box_rule_can_be_set_on_the_timm_drop_in():
    pytest.importorskip("torch")
    from smoothloss.torch import Mixup as TimmMixup

    mixup_fn = TimmMixup(mixup_alpha=0.0, cutmix_alpha=1.0, mode="elem", num_classes=K, seed=2)
    assert mixup_fn.box_rule == NEW_BOXES
    mixup_fn.box_rule = OLD_BOXES
    old = smoothloss.Mixup(mixup_alpha=0.0, cutmix_alpha=1.0, mode="elem", num_classes=K, seed=2, box_rule=OLD_BOXES)
    np.testing.assert_array_equal(mixup_fn.sample(6, (H, W)).box, old.sample(6, (H, W)).box)
    assert "box_rule='timm<=1.0.28'" in repr(mixup_fn)
    with pytest.raises(ValueError, match="unknown box_rule"):
        mixup_fn.box_rule = "old"


# ============================================================================ timm's own file
def _timm_mixup_module():
    """timm's ``timm/data/mixup.py``, loaded as a file (``import timm`` is not needed), and
    the installed timm version; skips where timm or torch is missing."""
    pytest.importorskip("torch")
    spec = importlib.util.find_spec("timm")  # finds the package without running it
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("timm is not installed (pip install --no-deps timm)")
    path = pathlib.Path(list(spec.submodule_search_locations)[0]) / "data" / "mixup.py"
    file_spec = importlib.util.spec_from_file_location("_timm_data_mixup", path)
    module = importlib.util.module_from_spec(file_spec)
    file_spec.loader.exec_module(module)
    version = tuple(int(p) for p in importlib.metadata.version("timm").split(".")[:3] if p.isdigit())
    return module, version


class LegacyDraws:
    """smoothloss's Generator calls served from a legacy ``RandomState``: what timm draws
    with ``np.random.rand``/``beta``/``randint`` from the global state."""

    def __init__(self, seed):
        self.state = np.random.RandomState(seed)

    def random(self, size=None):
        return self.state.random_sample(size)

    def beta(self, a, b, size=None):
        return self.state.beta(a, b, size)

    def integers(self, low, high=None, size=None):
        return self.state.randint(low, high, size)


@pytest.mark.parametrize("mode", ["batch", "pair", "elem"])
def test_mixup_matches_installed_timm_side_by_side(mode):
    """Against timm's own Mixup: the same global-state draws feed both, so the mixed
    batches and targets must agree. The box rule follows the installed timm version."""
    timm_mixup, version = _timm_mixup_module()
    import torch

    rule = NEW_BOXES if version >= (1, 0, 29) else OLD_BOXES
    data = np.random.default_rng(23)
    for name, config in CONFIGS.items():
        for seed in range(4):
            x = torch.from_numpy(data.normal(size=(6, C, H, W)).astype(np.float32))
            y = torch.from_numpy(data.integers(0, K, 6))
            state = np.random.get_state()
            try:
                np.random.seed(seed)
                x_timm, t_timm = timm_mixup.Mixup(mode=mode, num_classes=K, **config)(x.clone(), y)
            finally:
                np.random.set_state(state)
            mix = smoothloss.Mixup(mode=mode, num_classes=K, box_rule=rule, **config)
            mix.rng = LegacyDraws(seed)
            mixed, targets = mix(x, y)
            where = f"timm {version}, {name}, seed {seed}"
            torch.testing.assert_close(mixed, x_timm, rtol=2e-6, atol=2e-6, msg=where)
            torch.testing.assert_close(targets, t_timm, rtol=2e-6, atol=1e-7, msg=where)


def test_mixup_sample_path_equals_call(backend):
    """sample() + mix_images/mixup_target gives what __call__ gives, draw for draw."""
    if backend.traced:
        pytest.skip("the traced path is what test_mixup_matches_timm runs")
    data = np.random.default_rng(3)
    x = backend.asarray(data.normal(size=(6, C, H, W)).astype(np.float32))
    y = backend.asarray(data.integers(0, K, 6))
    for mode in ("batch", "elem"):
        config = dict(mixup_alpha=0.5, cutmix_alpha=1.0, mode=mode, num_classes=K)
        a_x, a_t = smoothloss.Mixup(seed=11, **config)(x, y)
        b_x, b_t = _traced_step("NCHW", 0.1)(x, y, *_params(smoothloss.Mixup(seed=11, **config).sample(6, (H, W))))
        np.testing.assert_allclose(backend.to_numpy(a_x), backend.to_numpy(b_x), rtol=1e-6)
        np.testing.assert_allclose(backend.to_numpy(a_t), backend.to_numpy(b_t), rtol=1e-6)


def _params(p: MixupParams):
    """The NumPy parameters as mix_images takes them (NumPy arrays move to the batch's framework)."""
    return np.asarray(p.lam, np.float32), p.box, np.asarray(p.cutmix)


def test_mixup_disabled_and_prob_zero_only_smooth(backend):
    x_np = np.random.default_rng(0).normal(size=(4, C, H, W)).astype(np.float32)
    x, y = backend.asarray(x_np), backend.asarray(np.array([0, 1, 2, 3]))
    off = smoothloss.Mixup(num_classes=K, seed=0)
    off.mixup_enabled = False
    for mix in (smoothloss.Mixup(prob=0.0, num_classes=K, seed=0, mode="elem"), off):
        mixed, t = mix(x, y)
        np.testing.assert_array_equal(backend.to_numpy(mixed), x_np)
        expected = timm_mixup_target(np.array([0, 1, 2, 3]), K, 1.0, 0.1)
        np.testing.assert_allclose(backend.to_numpy(t), expected, rtol=1e-6)


def test_mixup_float64_images_give_float64_targets(backend):
    x = backend.asarray(np.ones((2, 1, 4, 4)), "float64")
    _, t = smoothloss.Mixup(mode="pair", num_classes=3, seed=0)(x, backend.asarray(np.array([0, 2])))
    assert backend.dtype_name(t) == "float64"


# ============================================================================ FastCollateMixup
def _uint8_batch(data, size):
    images = data.integers(0, 256, size=(size, C, H, W), dtype=np.uint8)
    labels = data.integers(0, K, size)
    return images, labels


def _pairs(images, labels, as_torch=False):
    """The list a DataLoader hands to its collate_fn: fresh copies, as timm mutates them."""
    if as_torch:
        import torch

        return [(torch.from_numpy(img.copy()), int(y)) for img, y in zip(images, labels)]
    return [(img.copy(), int(y)) for img, y in zip(images, labels)]


@pytest.mark.parametrize("mode", ["batch", "pair", "elem"])
def test_fast_collate_mixup_rounds_what_mixup_mixes(mode):
    """The collate path: Mixup's draws and mix on the float32 images, rounded half to
    even to uint8; the targets are Mixup's."""
    data = np.random.default_rng(31)
    for name, config in CONFIGS.items():
        for seed in range(3):
            images, labels = _uint8_batch(data, 6)
            pairs = _pairs(images, labels)
            got_x, got_t = FastCollateMixup(mode=mode, num_classes=K, seed=seed, **config)(pairs)
            want_x, want_t = smoothloss.Mixup(mode=mode, num_classes=K, seed=seed, **config)(
                images.astype(np.float32), labels
            )
            assert got_x.dtype == np.uint8 and got_t.dtype == np.float32
            np.testing.assert_array_equal(got_x, np.round(want_x).astype(np.uint8), err_msg=f"{name}, {seed}")
            np.testing.assert_array_equal(got_t, want_t, err_msg=f"{name}, {seed}")
            assert all(np.array_equal(p[0], img) for p, img in zip(pairs, images))  # inputs untouched


def test_fast_collate_mixup_half_mode():
    """"half": B//2 draws; example i < B//2 mixed with B-1-i; only the first half returned."""
    data = np.random.default_rng(37)
    for name, config in CONFIGS.items():
        images, labels = _uint8_batch(data, 8)
        got_x, got_t = FastCollateMixup(mode="half", num_classes=K, seed=5, **config)(_pairs(images, labels))
        assert got_x.shape == (4, C, H, W) and got_t.shape == (4, K)
        reference = TimmMixupReference(np.random.default_rng(5), mode="elem", num_classes=K, **config)
        lam, use_cutmix = reference.params_per_elem(4)
        x = images.astype(np.float32)
        want = x[:4].copy()
        for i in range(4):
            j = 7 - i
            if lam[i] == 1.0:
                continue
            if use_cutmix[i]:
                (y0, y1, x0, x1), lam[i] = reference._cut(x.shape, lam[i])
                want[i][:, y0:y1, x0:x1] = x[j][:, y0:y1, x0:x1]
            else:
                want[i] = np.round(x[i] * lam[i] + x[j] * (1 - lam[i]))
        np.testing.assert_array_equal(got_x, want.astype(np.uint8), err_msg=name)
        full = timm_mixup_target(labels, K, np.concatenate([lam, np.ones(4, np.float32)])[:, None], 0.1)
        np.testing.assert_allclose(got_t, full[:4], rtol=1e-6, atol=1e-7, err_msg=name)


def test_fast_collate_mixup_torch_images_and_odd_batches():
    torch = pytest.importorskip("torch")
    data = np.random.default_rng(41)
    images, labels = _uint8_batch(data, 5)  # an odd batch: the middle pairs with itself
    config = dict(mixup_alpha=0.8, cutmix_alpha=1.0, mode="elem", num_classes=K)
    got_x, got_t = FastCollateMixup(seed=2, **config)(_pairs(images, labels, as_torch=True))
    assert isinstance(got_x, torch.Tensor) and got_x.dtype == torch.uint8 and got_t.dtype == torch.float32
    want_x, want_t = FastCollateMixup(seed=2, **config)(_pairs(images, labels))
    np.testing.assert_array_equal(got_x.numpy(), want_x)
    np.testing.assert_array_equal(got_t.numpy(), want_t)
    np.testing.assert_array_equal(want_x[2], images[2])
    # NHWC images
    hwc = np.ascontiguousarray(images.transpose(0, 2, 3, 1))
    got, _ = FastCollateMixup(seed=2, layout="NHWC", **config)(_pairs(hwc, labels))
    np.testing.assert_array_equal(got.transpose(0, 3, 1, 2), want_x)


def test_fast_collate_mixup_bad_input():
    collate = FastCollateMixup(num_classes=3, seed=0)
    img = np.zeros((1, 4, 4), np.uint8)
    with pytest.raises(TypeError, match="uint8 images"):
        collate([(img.astype(np.float32), 0), (img.astype(np.float32), 1)])
    with pytest.raises(TypeError, match="integer class indices"):
        collate([(img, 0.5), (img, 1)])
    with pytest.raises(ValueError, match="rank 3"):
        collate([(img[0], 0), (img[0], 1)])
    with pytest.raises(ValueError, match="non-empty list"):
        collate([])
    with pytest.raises(ValueError, match="unknown mode 'half'"):
        smoothloss.Mixup(mode="half")  # only the collate path drops half the batch


@pytest.mark.parametrize("mode", ["batch", "pair", "elem", "half"])
@pytest.mark.parametrize("as_torch", [False, True], ids=["numpy-images", "torch-images"])
def test_fast_collate_mixup_matches_installed_timm_side_by_side(mode, as_torch):
    """Against timm's own FastCollateMixup, fed the same global-state draws."""
    timm_mixup, version = _timm_mixup_module()
    import torch

    rule = NEW_BOXES if version >= (1, 0, 29) else OLD_BOXES
    data = np.random.default_rng(43)
    for name, config in CONFIGS.items():
        for seed in range(4):
            images, labels = _uint8_batch(data, 8)
            state = np.random.get_state()
            try:
                np.random.seed(seed)
                x_timm, t_timm = timm_mixup.FastCollateMixup(mode=mode, num_classes=K, **config)(
                    _pairs(images, labels, as_torch)
                )
            finally:
                np.random.set_state(state)
            collate = FastCollateMixup(mode=mode, num_classes=K, box_rule=rule, **config)
            collate.rng = LegacyDraws(seed)
            x_ours, t_ours = collate(_pairs(images, labels, as_torch))
            where = f"timm {version}, {name}, seed {seed}"
            if not as_torch:
                x_ours, t_ours = torch.from_numpy(x_ours), torch.from_numpy(t_ours)
            if mode == "half" and version < (1, 0, 29):  # timm then padded λ with float64 ones
                t_timm = t_timm.float()
            assert x_ours.dtype == x_timm.dtype and t_ours.dtype == t_timm.dtype, where
            assert torch.equal(x_ours, x_timm), where
            torch.testing.assert_close(t_ours, t_timm, rtol=2e-6, atol=1e-7, msg=where)


# ============================================================================ multi_label (timm 1.0.31)
def _multi_hot(data, size, soft=False):
    """Dense (size, K) targets: multi-hot 0/1 rows, or soft rows in [0, 1]."""
    if soft:
        return data.uniform(size=(size, K))
    return (data.random((size, K)) < 0.4).astype(np.float64)


def test_multi_label_targets_closed_form_float64(backend):
    """q = (1-ε)·t + ε/2 per entry, then λ·q + (1-λ)·q[partner]: written out in float64."""
    data = np.random.default_rng(51)
    t = _multi_hot(data, 5)
    t[2] = data.uniform(size=K)  # a soft row among the multi-hot ones
    eps, lam = 0.2, np.array([0.25, 1.0, 0.5, 0.0, 0.75])
    q = t * 0.8 + 0.1
    for index in (None, np.array([1, 0, 2, 4, 3])):
        partner = q[::-1] if index is None else q[index]
        want = lam[:, None] * q + (1.0 - lam[:, None]) * partner
        got = smoothloss.mixup_target(
            backend.asarray(t, "float64"), K, lam=backend.asarray(lam, "float64"), label_smoothing=eps,
            index=None if index is None else backend.asarray(index), multi_label=True, dtype=backend.dtype("float64"),
        )
        np.testing.assert_allclose(backend.to_numpy(got), want, rtol=1e-14, atol=1e-15)
    # integer / boolean multi-hot targets give the same; the default dtype is float32
    got = smoothloss.mixup_target(backend.asarray(t[:2].astype(np.int64)), K, lam=0.5, multi_label=True)
    assert backend.dtype_name(got) == "float32"
    np.testing.assert_allclose(backend.to_numpy(got), 0.5 * (t[:2] + t[:2][::-1]), rtol=1e-7)


def test_multi_label_mixup_only_smooths_when_nothing_mixes():
    t = _multi_hot(np.random.default_rng(52), 4)
    x = np.random.default_rng(53).normal(size=(4, C, H, W))
    mixed, got = smoothloss.Mixup(prob=0.0, label_smoothing=0.3, num_classes=K, multi_label=True, seed=0)(x, t)
    np.testing.assert_array_equal(mixed, x)
    assert got.dtype == np.float64  # float64 images give float64 targets
    np.testing.assert_allclose(got, t * 0.7 + 0.15, rtol=1e-15, atol=1e-16)
    assert "multi_label=True" in repr(smoothloss.Mixup(num_classes=K, multi_label=True))


def test_multi_label_bad_targets():
    mix = smoothloss.Mixup(num_classes=K, multi_label=True, seed=0)
    x = np.zeros((4, C, H, W), np.float32)
    with pytest.raises(ValueError, match=r"shape \(4, 5\)"):
        mix(x, np.zeros((4, K + 1)))
    with pytest.raises(ValueError, match=r"shape \(4, 5\)"):
        mix(x, np.array([0, 1, 2, 3]))  # class indices need multi_label=False
    with pytest.raises(ValueError, match="multi-label targets must be dense"):
        smoothloss.mixup_target(np.zeros((4, K, 1)), K, multi_label=True)
    with pytest.raises(TypeError, match="pass multi_label=True"):
        smoothloss.mixup_target(np.zeros((4, K)), K)


@pytest.mark.parametrize("mode", ["batch", "pair", "elem"])
@pytest.mark.parametrize("soft", [False, True], ids=["multi-hot", "soft"])
def test_multi_label_mixup_matches_installed_timm_side_by_side(mode, soft):
    """timm's Mixup(multi_label=True), its own file, against smoothloss.Mixup and the
    torch drop-in, fed the same global-state draws."""
    timm_mixup, version = _timm_mixup_module()
    if version < (1, 0, 31):
        pytest.skip(f"timm {version} has no multi_label (added in 1.0.31)")
    import torch

    from smoothloss.torch import Mixup as TimmMixup

    data = np.random.default_rng(59)
    for name, config in CONFIGS.items():
        for seed in range(3):
            x = torch.from_numpy(data.normal(size=(6, C, H, W)).astype(np.float32))
            t = torch.from_numpy(_multi_hot(data, 6, soft).astype(np.float32))
            state = np.random.get_state()
            try:
                np.random.seed(seed)
                x_timm, t_timm = timm_mixup.Mixup(
                    mode=mode, num_classes=K, multi_label=True, label_smoothing=0.2, **config
                )(x.clone(), t)
            finally:
                np.random.set_state(state)
            for mix in (
                smoothloss.Mixup(mode=mode, num_classes=K, multi_label=True, label_smoothing=0.2, **config),
                TimmMixup(mode=mode, num_classes=K, multi_label=True, label_smoothing=0.2, **config),
            ):
                mix.rng = LegacyDraws(seed)
                mixed, targets = mix(x, t)
                where = f"{type(mix).__module__}, {name}, seed {seed}"
                assert targets.dtype == t_timm.dtype, where
                torch.testing.assert_close(mixed, x_timm, rtol=2e-6, atol=2e-6, msg=where)
                torch.testing.assert_close(targets, t_timm, rtol=2e-6, atol=1e-7, msg=where)


def test_timm_drop_in_mixup_multi_label_and_box_rule_arguments():
    torch = pytest.importorskip("torch")
    from smoothloss.torch import Mixup as TimmMixup

    # timm's positional order: ..., num_classes, multi_label; then seed; box_rule keyword-only
    fn = TimmMixup(1.0, 0.0, None, 1.0, 0.5, "batch", True, 0.1, K, True, 3)
    assert fn.multi_label and fn.num_classes == K
    with pytest.raises(TypeError, match="pass multi_label=True"):
        TimmMixup(num_classes=K, seed=0)(torch.zeros(2, C, H, W), torch.zeros(2, K))
    old = TimmMixup(mixup_alpha=0.0, cutmix_alpha=1.0, mode="elem", num_classes=K, seed=2, box_rule=OLD_BOXES)
    assert old.box_rule == OLD_BOXES and "box_rule='timm<=1.0.28'" in repr(old)
    want = smoothloss.Mixup(mixup_alpha=0.0, cutmix_alpha=1.0, mode="elem", num_classes=K, seed=2, box_rule=OLD_BOXES)
    np.testing.assert_array_equal(old.sample(6, (H, W)).box, want.sample(6, (H, W)).box)
    new = TimmMixup(mixup_alpha=0.0, cutmix_alpha=1.0, mode="elem", num_classes=K, seed=2)
    assert new.box_rule == NEW_BOXES
    x = torch.from_numpy(np.random.default_rng(61).normal(size=(6, C, H, W)).astype(np.float32))
    y = torch.arange(6) % K
    got_x, got_t = TimmMixup(mixup_alpha=0.0, cutmix_alpha=1.0, mode="elem", num_classes=K, seed=2,
                             box_rule=OLD_BOXES)(x, y)
    want_x, want_t = smoothloss.Mixup(mixup_alpha=0.0, cutmix_alpha=1.0, mode="elem", num_classes=K, seed=2,
                                      box_rule=OLD_BOXES)(x, y)
    assert torch.equal(got_x, want_x) and torch.equal(got_t, want_t)
    with pytest.raises(ValueError, match="unknown box_rule"):
        TimmMixup(box_rule="old")
    with pytest.raises(TypeError):
        TimmMixup(1.0, 0.0, None, 1.0, 0.5, "batch", True, 0.1, K, False, 0, OLD_BOXES)  # box_rule is keyword-only


# ============================================================================ smoothloss.torch.FastCollateMixup
@pytest.mark.parametrize("mode", ["batch", "pair", "elem", "half"])
@pytest.mark.parametrize("as_torch", [False, True], ids=["numpy-images", "torch-images"])
@pytest.mark.parametrize("multi_label", [False, True], ids=["indices", "multi-label"])
def test_torch_fast_collate_mixup_matches_installed_timm_side_by_side(mode, as_torch, multi_label):
    """The torch drop-in against timm's own FastCollateMixup, same draws: torch tensors
    out, the same uint8 images and targets; the batch handed in is left unchanged."""
    timm_mixup, version = _timm_mixup_module()
    if multi_label and version < (1, 0, 31):
        pytest.skip(f"timm {version} has no multi_label (added in 1.0.31)")
    import torch

    from smoothloss.torch import FastCollateMixup as TorchFastCollateMixup

    rule = NEW_BOXES if version >= (1, 0, 29) else OLD_BOXES
    data = np.random.default_rng(67)
    extra = dict(multi_label=True) if multi_label else {}
    for name, config in CONFIGS.items():
        for seed in range(3):
            images, labels = _uint8_batch(data, 8)
            if multi_label:
                labels = _multi_hot(data, 8).astype(np.float32)
            pairs = _pairs(images, labels, as_torch) if not multi_label else [
                (torch.from_numpy(img.copy()) if as_torch else img.copy(), torch.from_numpy(t.copy()))
                for img, t in zip(images, labels)
            ]
            state = np.random.get_state()
            try:
                np.random.seed(seed)
                x_timm, t_timm = timm_mixup.FastCollateMixup(mode=mode, num_classes=K, **extra, **config)(
                    [(img.clone() if as_torch else img.copy(), t) for img, t in pairs]
                )
            finally:
                np.random.set_state(state)
            collate = TorchFastCollateMixup(mode=mode, num_classes=K, box_rule=rule, **extra, **config)
            collate.rng = LegacyDraws(seed)
            x_ours, t_ours = collate(pairs)
            where = f"timm {version}, {name}, seed {seed}"
            assert isinstance(x_ours, torch.Tensor) and isinstance(t_ours, torch.Tensor), where
            if mode == "half" and version < (1, 0, 29):  # timm then padded λ with float64 ones
                t_timm = t_timm.float()
            assert x_ours.dtype == x_timm.dtype == torch.uint8 and t_ours.dtype == t_timm.dtype, where
            assert torch.equal(x_ours, x_timm), where
            torch.testing.assert_close(t_ours, t_timm, rtol=2e-6, atol=1e-7, msg=where)
            for (img, _), original in zip(pairs, images):  # the batch is left as it was
                np.testing.assert_array_equal(np.asarray(img), original, err_msg=where)


def test_torch_fast_collate_mixup_labels_and_loader():
    torch = pytest.importorskip("torch")
    from smoothloss.torch import FastCollateMixup as TorchFastCollateMixup

    data = np.random.default_rng(71)
    images, labels = _uint8_batch(data, 4)
    as_ints = [(img, int(y)) for img, y in zip(images, labels)]
    as_tensors = [(torch.from_numpy(img), torch.tensor(y)) for img, y in zip(images, labels)]
    a = TorchFastCollateMixup(mixup_alpha=0.8, cutmix_alpha=1.0, mode="elem", num_classes=K, seed=4)(as_ints)
    b = TorchFastCollateMixup(mixup_alpha=0.8, cutmix_alpha=1.0, mode="elem", num_classes=K, seed=4)(as_tensors)
    core = FastCollateMixup(mixup_alpha=0.8, cutmix_alpha=1.0, mode="elem", num_classes=K, seed=4)(as_ints)
    for got in (a, b):
        np.testing.assert_array_equal(got[0].numpy(), core[0])
        np.testing.assert_array_equal(got[1].numpy(), core[1])
    collate = TorchFastCollateMixup(num_classes=K, seed=0)
    with pytest.raises(TypeError, match="integer class indices"):
        collate([(images[0], torch.tensor(0.5)), (images[1], 1)])
    with pytest.raises(TypeError, match="torch.Tensor"):
        collate([(images[0].tolist(), 0), (images[1].tolist(), 1)])
    with pytest.raises(ValueError, match=r"shape \(2, 5\)"):
        TorchFastCollateMixup(num_classes=K, multi_label=True, seed=0)([(images[0], 0), (images[1], 1)])
    loader = torch.utils.data.DataLoader(as_ints, batch_size=4, collate_fn=TorchFastCollateMixup(num_classes=K, seed=0))
    x, t = next(iter(loader))
    assert x.dtype == torch.uint8 and x.shape == (4, C, H, W) and t.shape == (4, K)


# ============================================================================ DataLoader workers
class _TinyImages:
    """A map-style dataset of 16 one-channel 4×4 images with their labels."""

    def __len__(self):
        return 16

    def __getitem__(self, i):
        return np.full((1, 4, 4), i, np.float32), i % 3


class _DrawInCollate:
    """A collate_fn that draws the mixing parameters of its batch inside the worker."""

    def __init__(self, mix):
        self.mix = mix

    def __call__(self, batch):
        import torch.utils.data

        p = self.mix.sample(len(batch), (4, 4))
        return torch.utils.data.get_worker_info().id, p.lam, p.box


def _draws_per_worker(seed, loader_seed, epochs=2):
    """{(epoch, worker id): [(λ, boxes) per batch]} from a DataLoader with 2 workers."""
    import torch

    mix = smoothloss.Mixup(mixup_alpha=1.0, cutmix_alpha=1.0, mode="elem", seed=seed)
    loader = torch.utils.data.DataLoader(
        _TinyImages(), batch_size=4, num_workers=2, collate_fn=_DrawInCollate(mix),
        multiprocessing_context="spawn",  # no fork of a process that already runs JAX/TF threads
        generator=torch.Generator().manual_seed(loader_seed),
    )
    draws = {}
    for epoch in range(epochs):
        for worker, lam, box in loader:
            draws.setdefault((epoch, worker), []).append((lam, box))
    fresh = smoothloss.Mixup(mixup_alpha=1.0, cutmix_alpha=1.0, mode="elem", seed=seed)
    assert np.array_equal(mix.sample(4, (4, 4)).lam, fresh.sample(4, (4, 4)).lam)  # the parent's rng untouched
    return draws


def _same(a, b):
    return len(a) == len(b) and all(np.array_equal(u, v) for p, q in zip(a, b) for u, v in zip(p, q))


def test_mixup_in_dataloader_workers_draws_a_stream_per_worker():
    pytest.importorskip("torch")
    first = _draws_per_worker(seed=0, loader_seed=0)
    assert sorted(first) == [(0, 0), (0, 1), (1, 0), (1, 1)] and all(len(v) == 2 for v in first.values())
    # each worker its own stream, and a new one in the next epoch (new workers, new base seed)
    assert not _same(first[0, 0], first[0, 1])
    assert not _same(first[0, 0], first[1, 0]) and not _same(first[0, 1], first[1, 1])
    # the same seeds reproduce every draw
    again = _draws_per_worker(seed=0, loader_seed=0)
    assert all(_same(first[k], again[k]) for k in first)
    # another Mixup seed, same loader: other draws
    other = _draws_per_worker(seed=1, loader_seed=0, epochs=1)
    assert not _same(first[0, 0], other[0, 0]) and not _same(first[0, 1], other[0, 1])


def test_mixup_outside_workers_draws_from_its_own_rng(monkeypatch):
    """Outside a worker (get_worker_info() is None, or torch not imported) nothing is derived."""
    import sys

    mix = smoothloss.Mixup(mode="elem", seed=3)
    expected = np.random.default_rng(3).beta(1.0, 1.0, size=5).astype(np.float32)
    monkeypatch.setitem(sys.modules, "torch.utils.data", None)
    np.testing.assert_array_equal(mix.sample(5, (4, 4)).lam, expected)


# ============================================================================ one option list
DECLARED = {f.name: f.default for f in dataclasses.fields(MixupOptions)}
# A value other than the default for every option (cutmix_minmax sets cutmix_alpha = 1).
NOT_DEFAULT = dict(
    mixup_alpha=0.5, cutmix_alpha=1.0, cutmix_minmax=(0.25, 0.75), prob=0.3, switch_prob=0.2, mode="elem",
    correct_lam=False, label_smoothing=0.2, num_classes=7, seed=5, layout="NHWC", box_rule=OLD_BOXES,
    multi_label=True,
)


def _sampler(where, cls):
    module = smoothloss if where == "core" else pytest.importorskip("smoothloss.torch")
    return getattr(module, cls)


@pytest.mark.parametrize("cls", ["Mixup", "FastCollateMixup"])
@pytest.mark.parametrize("where", ["core", "torch"])
def test_sampler_constructors_take_the_declared_options(where, cls):
    """The core sampler and the torch drop-ins take exactly the options of MixupOptions,
    with its defaults (the drop-ins all but ``layout``: their images are NCHW), named in
    their signatures, so the constructors and the declaration cannot drift apart."""
    params = inspect.signature(_sampler(where, cls)).parameters
    expected = dict(DECLARED) if where == "core" else {k: v for k, v in DECLARED.items() if k != "layout"}
    assert set(params) == set(expected)
    for name, p in params.items():
        assert p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY), name
        assert (type(p.default), p.default) == (type(expected[name]), expected[name]), name
    if where == "core":
        assert list(params) == list(DECLARED)  # the core keeps the declaration's order
    assert set(NOT_DEFAULT) == set(DECLARED)
    assert all(NOT_DEFAULT[name] != default for name, default in DECLARED.items())


@pytest.mark.parametrize("cls", ["Mixup", "FastCollateMixup"])
@pytest.mark.parametrize("where", ["core", "torch"])
def test_sampler_constructors_hand_on_every_option(where, cls):
    """Each option given to a constructor reaches the sampler, as its attribute (``prob``
    as timm's ``mix_prob``) and in its repr; ``seed`` seeds ``rng``."""
    sampler = _sampler(where, cls)
    given = {k: v for k, v in NOT_DEFAULT.items() if k in inspect.signature(sampler).parameters}
    mix = sampler(**given)
    checked = type(mix)._OPTIONS(**given)
    assert checked.cutmix_alpha == 1.0  # timm's rule, applied once
    for name, attribute in MixupOptions.kept_as().items():
        assert getattr(mix, attribute) == getattr(checked, name), name
        if name in given:
            assert getattr(mix, attribute) == (1.0 if name == "cutmix_alpha" else given[name]), name
    assert mix.layout == given.get("layout", "NCHW")
    assert mix.rng.random() == np.random.default_rng(5).random()
    assert repr(mix) == (
        f"Mixup(mixup_alpha=0.5, cutmix_alpha=1.0, cutmix_minmax=(0.25, 0.75), prob=0.3, switch_prob=0.2, "
        f"mode='elem', correct_lam=False, label_smoothing=0.2, num_classes=7, layout={mix.layout!r}, "
        f"box_rule='timm<=1.0.28', multi_label=True)"
    )


def test_fast_collate_options_add_the_half_mode_only():
    collate, core = FastCollateMixup._OPTIONS, smoothloss.Mixup._OPTIONS
    assert [(f.name, f.default) for f in dataclasses.fields(collate)] == list(DECLARED.items())
    assert collate(mode="half").mode == "half"
    with pytest.raises(ValueError, match="unknown mode 'half'"):
        core(mode="half")
    with pytest.raises(ValueError, match="unknown mode 'x'"):
        collate(mode="x")


# ============================================================================ mix_images
def paste_or_blend_reference(x, index, lam, boxes, cut):
    """In place, one example at a time, as timm mutates its batch (NCHW)."""
    out = x.copy()
    for i in range(len(x)):
        j = index[i]
        if cut[i]:
            y0, y1, x0, x1 = boxes[i]
            out[i][:, y0:y1, x0:x1] = x[j][:, y0:y1, x0:x1]
        else:
            out[i] = x[i] * lam[i] + x[j] * (1 - lam[i])
    return out


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_mix_images_per_example(backend, layout):
    rng = np.random.default_rng(5)
    B = 5
    x_np = rng.normal(size=(B, C, H, W)).astype(np.float32)
    index = rng.permutation(B)
    lam = rng.uniform(size=B).astype(np.float32)
    boxes = np.array([[0, 8, 0, 10], [2, 5, 3, 3], [1, 4, 6, 10], [7, 8, 0, 1], [0, 0, 0, 0]])
    cut = np.array([True, True, False, True, False])
    x = backend.asarray(to_layout(x_np, layout))

    def mixed(**kw):
        names = list(kw)
        out = backend.call(
            lambda x, *values: smoothloss.mix_images(x, layout=layout, **dict(zip(names, values))),
            x, *(backend.asarray(v) for v in kw.values()),
        )
        assert_native(backend, out, x)
        return from_layout(backend.to_numpy(out), layout)

    expected = paste_or_blend_reference(x_np, index, lam, boxes, cut)
    np.testing.assert_allclose(mixed(lam=lam, index=index, box=boxes, cutmix=cut), expected, rtol=1e-6, atol=1e-6)
    # paste only: every example gets its own box
    expected = paste_or_blend_reference(x_np, index, lam, boxes, np.ones(B, bool))
    np.testing.assert_array_equal(mixed(index=index, box=boxes), expected)
    # blend only, timm's (B, 1) λ and the default flip
    flip = np.arange(B)[::-1]
    expected = paste_or_blend_reference(x_np, flip, lam, boxes, np.zeros(B, bool))
    np.testing.assert_allclose(mixed(lam=lam[:, None]), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_mix_images_one_box_for_the_batch(backend, layout):
    rng = np.random.default_rng(6)
    x_np = rng.normal(size=(4, C, H, W)).astype(np.float32)
    x = backend.asarray(to_layout(x_np, layout))
    expected = x_np.copy()
    expected[:, :, 3:7, 2:9] = x_np[::-1][:, :, 3:7, 2:9]  # timm's batch paste
    box = np.array([3, 7, 2, 9])
    traced = backend.call(lambda x, b: smoothloss.mix_images(x, box=b, layout=layout), x, backend.asarray(box))
    np.testing.assert_array_equal(from_layout(backend.to_numpy(traced), layout), expected)
    ints = smoothloss.mix_images(x, box=(3, 7, 2, 9), layout=layout)
    np.testing.assert_array_equal(from_layout(backend.to_numpy(ints), layout), expected)
    # a traced scalar switch picks the paste or the blend for the whole batch
    for flag in (True, False):
        out = backend.call(
            lambda x, b, c, lam: smoothloss.mix_images(x, lam=lam, box=b, cutmix=c, layout=layout),
            x, backend.asarray(box), scalar(backend, flag), scalar(backend, np.float32(0.25)),
        )
        want = expected if flag else x_np * np.float32(0.25) + x_np[::-1] * np.float32(0.75)
        np.testing.assert_allclose(from_layout(backend.to_numpy(out), layout), want, rtol=1e-6, atol=1e-6)


def test_mix_images_integer_images_paste_but_do_not_blend(backend):
    x_np = np.arange(2 * 1 * 3 * 3, dtype=np.int32).reshape(2, 1, 3, 3)
    x = backend.asarray(x_np)
    out = backend.to_numpy(smoothloss.mix_images(x, box=(0, 2, 1, 3)))
    expected = x_np.copy()
    expected[:, :, 0:2, 1:3] = x_np[::-1][:, :, 0:2, 1:3]
    np.testing.assert_array_equal(out, expected)
    with pytest.raises(TypeError, match="floating images"):
        smoothloss.mix_images(x, lam=0.5)


def test_mix_images_leaves_input_alone():
    torch = pytest.importorskip("torch")
    x = torch.arange(8.0).reshape(2, 1, 2, 2)
    before = x.clone()
    out_blend = smoothloss.mix_images(x, lam=0.5)
    out_paste = smoothloss.mix_images(x, box=(0, 1, 0, 1))
    assert torch.equal(x, before)
    assert out_blend.data_ptr() != x.data_ptr() and out_paste.data_ptr() != x.data_ptr()
    mixed, _ = smoothloss.Mixup(prob=0.0, num_classes=2, seed=0)(x, torch.tensor([0, 1]))
    assert torch.equal(mixed, before) and mixed.data_ptr() != x.data_ptr()


# ============================================================================ sampler statistics
def test_sampler_beta_mean_and_variance():
    for alpha in (1.0, 0.2):
        p = smoothloss.Mixup(mixup_alpha=alpha, mode="elem", seed=123).sample(40_000, (8, 8))
        lam = p.lam.astype(np.float64)
        assert abs(lam.mean() - 0.5) < 0.01  # Beta(α, α) has mean 1/2 ...
        assert abs(lam.var() - 1.0 / (4.0 * (2.0 * alpha + 1.0))) < 0.005  # ... and variance 1/(4(2α+1))
        assert not p.cutmix.any() and not p.box.any()


def test_sampler_switch_and_apply_probabilities():
    mix = smoothloss.Mixup(mixup_alpha=1.0, cutmix_alpha=1.0, switch_prob=0.3, prob=0.6, mode="elem", seed=9)
    p = mix.sample(20_000, (16, 16))
    applied = (p.lam != 1.0) | p.cutmix  # a box can be empty (λ corrected to 1), yet pasted
    assert abs(applied.mean() - 0.6) < 0.015
    assert abs(p.cutmix.mean() / applied.mean() - 0.3) < 0.015  # boxes only where mixing applies
    assert np.all(p.box[~p.cutmix] == 0)
    area = (p.box[:, 1] - p.box[:, 0]) * (p.box[:, 3] - p.box[:, 2])
    assert np.all(area[p.cutmix & (p.lam == 1.0)] == 0)
    # per batch: one draw per call
    mix = smoothloss.Mixup(mixup_alpha=1.0, cutmix_alpha=1.0, switch_prob=0.3, prob=0.6, seed=10)
    draws = [mix.sample(4, (16, 16)) for _ in range(4000)]
    cut = np.array([d.cutmix for d in draws])
    applied = np.array([d.lam != 1.0 for d in draws]) | cut
    assert abs(applied.mean() - 0.6) < 0.03
    assert abs(cut[applied].mean() - 0.3) < 0.03


def test_sampler_pairs_and_seeds():
    p = smoothloss.Mixup(mixup_alpha=1.0, cutmix_alpha=1.0, mode="pair", seed=4).sample(7, (8, 8))
    np.testing.assert_array_equal(p.index, [6, 5, 4, 3, 2, 1, 0])
    np.testing.assert_array_equal(p.lam, p.lam[::-1])
    np.testing.assert_array_equal(p.box, p.box[::-1])
    assert p.lam[3] == 1.0 and not p.cutmix[3]
    # cutmix λ is the share outside the box
    area = (p.box[:, 1] - p.box[:, 0]) * (p.box[:, 3] - p.box[:, 2])
    np.testing.assert_allclose(p.lam[p.cutmix], (1 - area / 64.0)[p.cutmix], rtol=1e-6)
    # the same seed gives the same draws; a Generator is used as given (its state advances)
    a = smoothloss.Mixup(mode="elem", seed=5).sample(8, (8, 8))
    b = smoothloss.Mixup(mode="elem", seed=np.random.default_rng(5)).sample(8, (8, 8))
    np.testing.assert_array_equal(a.lam, b.lam)
    g = np.random.default_rng(5)
    mix = smoothloss.Mixup(mode="elem", seed=g)
    assert mix.rng is g
    first, second = mix.sample(8, (8, 8)), mix.sample(8, (8, 8))
    assert not np.array_equal(first.lam, second.lam)


# ============================================================================ mixup_cross_entropy
MCE_CASES = {
    "batch_lam": dict(lam=0.7, label_smoothing=0.1),
    "per_example_weighted": dict(lam="array", label_smoothing=0.2, weight=True),
    "options": dict(lam="array", label_smoothing=0.1, convention="others", z_loss=1e-3, softcap=5.0,
                    kl=True, index=True, reduction="sum", weight=True),
    "class_axis_1": dict(lam="array", label_smoothing=0.1, axis=1, reduction="none"),
}


def _smooth(labels, K, eps, convention):
    on, off = (1 - eps + eps / K, eps / K) if convention == "uniform" else (1 - eps, eps / (K - 1))
    q = np.full(labels.shape + (K,), off)
    np.put_along_axis(q, labels[..., None], on, axis=-1)
    return q


@pytest.mark.parametrize("case", list(MCE_CASES))
def test_mixup_cross_entropy_equals_dense_path(backend, case):
    spec = dict(MCE_CASES[case])
    rng = np.random.default_rng(len(case))
    B, Kc = 5, 6
    axis = spec.pop("axis", -1)
    shape = (B, Kc, 3) if axis == 1 else (B, Kc)
    x_np = rng.normal(size=shape) * 2
    y_np = rng.integers(0, Kc, (B, 3) if axis == 1 else B)
    lam_np = rng.uniform(size=B) if spec["lam"] == "array" else spec["lam"]
    index_np = rng.permutation(B) if spec.pop("index", False) else np.arange(B)[::-1]
    w_np = rng.uniform(0.5, 2.0, Kc) if spec.pop("weight", False) else None
    eps, convention = spec["label_smoothing"], spec.get("convention", "uniform")
    reduction = spec.get("reduction", "mean")
    options = {k: v for k, v in spec.items() if k not in ("lam",)}

    # float64 reference: the dense mixed target q, then plain cross-entropy
    lam_b = np.reshape(lam_np, (-1,) + (1,) * (y_np.ndim - 1)) if np.ndim(lam_np) else np.asarray(lam_np)
    lam_k = lam_b[..., None]
    q = lam_k * _smooth(y_np, Kc, eps, convention) + (1 - lam_k) * _smooth(y_np[index_np], Kc, eps, convention)
    ref_options = {k: v for k, v in options.items() if k not in ("label_smoothing", "convention")}
    ref_loss, ref_grad = reference_cross_entropy(
        x_np, np.moveaxis(q, -1, axis), axis=axis, weight=w_np, **ref_options
    )

    x = backend.asarray(x_np, "float64")
    y = backend.asarray(y_np)
    lam = backend.asarray(np.asarray(lam_np)) if np.ndim(lam_np) else lam_np
    index = backend.asarray(index_np)
    weight = None if w_np is None else backend.asarray(w_np)

    def mixed(x, y, lam, index):
        return smoothloss.mixup_cross_entropy(x, y, lam=lam, index=index, axis=axis, weight=weight, **options)

    def dense(x, y, lam, index):
        t = smoothloss.mixup_target(y, Kc, lam=lam, label_smoothing=0.0, index=index, dtype=x.dtype)
        if axis != -1:
            t = smoothloss.backends.array_namespace(t).moveaxis(t, -1, axis)
        return smoothloss.cross_entropy(x, t, axis=axis, weight=weight, **options)

    if backend.traced and not np.ndim(lam_np):  # a traced λ too
        lam = scalar(backend, lam_np)
    got = backend.call(mixed, x, y, lam, index)
    via_dense = backend.call(dense, x, y, lam, index)
    assert_native(backend, got, x)
    assert rel_err(backend.to_numpy(got), ref_loss) <= 1e-12, case
    assert rel_err(backend.to_numpy(via_dense), ref_loss) <= 1e-12, case
    if reduction == "none":
        assert tuple(got.shape) == y_np.shape
    if backend.has_autodiff:
        (g,) = backend.grads(mixed, (x, y, lam, index), (0,))
        (g_dense,) = backend.grads(dense, (x, y, lam, index), (0,))
        assert rel_err(backend.to_numpy(g), ref_grad) <= 1e-12, case
        assert rel_err(backend.to_numpy(g_dense), ref_grad) <= 1e-12, case


def test_mixup_cross_entropy_float32_and_smoothing_in_target(backend):
    """With smoothing in the loss or in the target: the same number (timm's recipe)."""
    rng = np.random.default_rng(8)
    x = backend.asarray(rng.normal(size=(6, 10)), "float32")
    y = backend.asarray(rng.integers(0, 10, 6))
    lam = backend.asarray(rng.uniform(size=6).astype(np.float32))
    a = smoothloss.mixup_cross_entropy(x, y, lam=lam, label_smoothing=0.1)
    b = smoothloss.cross_entropy(x, smoothloss.mixup_target(y, 10, lam=lam, label_smoothing=0.1))
    assert backend.dtype_name(a) == "float32"
    assert rel_err(backend.to_numpy(a), backend.to_numpy(b)) <= 1e-6


def test_mixup_cross_entropy_saves_no_class_sized_target():
    """The autograd graph keeps the logits and O(B) statistics: no B×K target or log-softmax."""
    torch = pytest.importorskip("torch")
    x = torch.randn(64, 1000, requires_grad=True)
    y = torch.randint(0, 1000, (64,))
    lam = torch.rand(64)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = smoothloss.mixup_cross_entropy(x, y, lam=lam, label_smoothing=0.1)
    big = [t for t in saved if t.numel() >= x.numel()]
    assert big and all(t.data_ptr() == x.data_ptr() for t in big)  # only the logits themselves
    loss.backward()
    x_dense = x.detach().clone().requires_grad_(True)
    dense = smoothloss.cross_entropy(x_dense, smoothloss.mixup_target(y, 1000, lam=lam, label_smoothing=0.1))
    dense.backward()
    torch.testing.assert_close(loss, dense)
    torch.testing.assert_close(x.grad, x_dense.grad)


# ============================================================================ bad input
def test_bad_mixing_arguments(backend):
    y = backend.asarray(np.array([0, 1, 2]))
    x = backend.asarray(np.zeros((3, 1, 4, 4)), "float32")
    with pytest.raises(ValueError, match=r"lam must lie in \[0, 1\], got 1.5"):
        smoothloss.mixup_target(y, 3, lam=1.5)
    with pytest.raises(ValueError, match=r"shape \(3,\) or \(3, 1\), got \(2,\)"):
        smoothloss.mixup_target(y, 3, lam=backend.asarray(np.array([0.5, 0.5])))
    with pytest.raises(ValueError, match=r"lam must lie in \[0, 1\]; found values in \[-0.1"):
        smoothloss.mix_images(x, lam=backend.asarray(np.array([0.5, -0.1, 0.5])))
    with pytest.raises(ValueError, match=r"index must have shape \(3,\)"):
        smoothloss.mixup_target(y, 3, lam=0.5, index=backend.asarray(np.array([0, 1])))
    with pytest.raises(ValueError, match=r"index must lie in \[0, 3\); found values in \[0, 3\]"):
        smoothloss.mix_images(x, lam=0.5, index=backend.asarray(np.array([0, 1, 3])))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        smoothloss.mixup_target(backend.asarray(np.array([0, 3, 1])), 3)
    with pytest.raises(TypeError, match="integer class labels"):
        smoothloss.mixup_target(backend.asarray(np.zeros(3), "float32"), 3)
    with pytest.raises(ValueError, match=r"shape \(4,\) or \(B, 4\)"):
        smoothloss.mix_images(x, box=backend.asarray(np.array([0, 1, 2])))
    with pytest.raises(ValueError, match="unknown layout 'CHW'"):
        smoothloss.mix_images(x, lam=0.5, layout="CHW")
    with pytest.raises(ValueError, match="lam is required"):
        smoothloss.mix_images(x)
    with pytest.raises(ValueError, match=r"rank 4.*\(3, 16\)"):
        smoothloss.mix_images(backend.asarray(np.zeros((3, 16)), "float32"), box=(0, 1, 0, 1))
    with pytest.raises(TypeError, match="integer class labels"):
        smoothloss.mixup_cross_entropy(x[:, 0, 0, :3], backend.asarray(np.zeros(3), "float32"), lam=0.5)


def test_mixed_frameworks_rejected_but_numpy_parameters_accepted(framework):
    x = framework.asarray(np.zeros((2, 1, 2, 2)), "float32")
    out = smoothloss.mix_images(
        x, lam=np.array([0.5, 0.25], np.float32), box=np.array([0, 1, 0, 1]), cutmix=np.array([True, False])
    )
    assert framework_name(out) == framework.framework
    with pytest.raises(TypeError, match="different frameworks"):
        smoothloss.mixup_target(
            framework.asarray(np.array([0, 1])), 2, lam=0.5, index=_other_framework_index(framework)
        )


def _other_framework_index(framework):
    if framework.framework == "torch":
        jnp = pytest.importorskip("jax.numpy")
        return jnp.asarray([1, 0])
    torch = pytest.importorskip("torch")
    return torch.tensor([1, 0])


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(mode="half"), "unknown mode 'half'"),
        (dict(prob=1.2), r"prob must lie in \[0, 1\]"),
        (dict(switch_prob=-0.1), "switch_prob"),
        (dict(mixup_alpha=0.0), "nothing to mix"),
        (dict(mixup_alpha=-1.0), "mixup_alpha"),
        (dict(cutmix_minmax=(0.8, 0.2)), "0 <= min < max <= 1"),
        (dict(num_classes=0), "num_classes"),
        (dict(label_smoothing=2.0), "label_smoothing"),
        (dict(layout="HWC"), "unknown layout"),
        (dict(box_rule="timm<=1.0.29"), "unknown box_rule 'timm<=1.0.29'"),
    ],
)
def test_bad_mixup_options(kwargs, words):
    with pytest.raises((ValueError, TypeError), match=words):
        smoothloss.Mixup(**kwargs)


def test_minmax_too_small_for_image():
    mix = smoothloss.Mixup(mixup_alpha=0.0, cutmix_minmax=(0.3, 0.45), seed=0)
    with pytest.raises(ValueError, match=r"H=4"):
        mix.sample(2, (4, 40))


def test_mixup_rejects_wrong_shapes(backend):
    mix = smoothloss.Mixup(num_classes=3, seed=0)
    with pytest.raises(ValueError, match="rank 4"):
        mix(backend.asarray(np.zeros((2, 4, 4)), "float32"), backend.asarray(np.array([0, 1])))
    with pytest.raises(ValueError, match=r"labels must have shape \(2,\)"):
        mix(backend.asarray(np.zeros((2, 1, 4, 4)), "float32"), backend.asarray(np.array([0, 1, 2])))
    assert math.isclose(mix.label_smoothing, 0.1)
