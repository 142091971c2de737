"""smoothloss: label-smoothed cross-entropy and soft targets, written once against the
Python Array API and run unchanged on NumPy, PyTorch, JAX and TensorFlow arrays.

Importing this package imports no framework; a framework is used only when its arrays
are handed in.
"""

from smoothloss._formulas import smoothing_coefficients
from smoothloss._losses import cross_entropy, cross_entropy_and_grad, linear_cross_entropy, linear_cross_entropy_and_grad
from smoothloss._binary import binary_cross_entropy
from smoothloss._mixing import mix_images, mixup_cross_entropy, mixup_target
from smoothloss._mixup import FastCollateMixup, Mixup, MixupParams
from smoothloss._targets import one_hot, smooth_labels
from smoothloss.backends._base import compile_mode, set_compile_mode

__version__ = "0.1.0"

__all__ = [
    "FastCollateMixup",
    "Mixup",
    "MixupParams",
    "binary_cross_entropy",
    "compile_mode",
    "cross_entropy",
    "cross_entropy_and_grad",
    "linear_cross_entropy",
    "linear_cross_entropy_and_grad",
    "mix_images",
    "mixup_cross_entropy",
    "mixup_target",
    "one_hot",
    "set_compile_mode",
    "smooth_labels",
    "smoothing_coefficients",
]
