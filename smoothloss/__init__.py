"""smoothloss: label-smoothed cross-entropy and soft targets, written once against the
Python Array API and run unchanged on NumPy, PyTorch, JAX and TensorFlow arrays.

Importing this package imports no framework; a framework is used only when its arrays
are handed in.
"""

from smoothloss._core import cross_entropy, cross_entropy_and_grad, smoothing_coefficients
from smoothloss._targets import one_hot, smooth_labels

__version__ = "0.1.0"

__all__ = [
    "cross_entropy",
    "cross_entropy_and_grad",
    "one_hot",
    "smooth_labels",
    "smoothing_coefficients",
]
