"""Root conftest: one ``backend`` fixture, one test id per backend.

Backends: numpy, array_api_strict, torch, jax, jax-jit (every case traced by jax.jit),
tensorflow and tensorflow-function (traced by tf.function). A framework that is not
installed skips its ids; it never passes silently. ``--device`` (default cpu) runs the
same suite on another device, e.g. ``--device cuda``.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # quiet TensorFlow's start-up banner

from smoothloss.testing.drivers import DRIVERS, get_driver  # noqa: E402

BACKENDS = list(DRIVERS)
FRAMEWORK_BACKENDS = ["torch", "jax", "jax-jit", "tensorflow", "tensorflow-function"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--device", default="cpu", help="device for framework arrays: cpu, cuda, cuda:1, ...")


def _driver(request: pytest.FixtureRequest, name: str):
    cls = DRIVERS[name]
    pytest.importorskip(cls.framework)
    if cls.framework == "jax":
        import jax

        jax.config.update("jax_enable_x64", True)
    device = request.config.getoption("--device")
    if cls.framework in ("numpy", "array_api_strict") and device != "cpu":
        pytest.skip(f"{name} runs on the CPU only")
    driver = get_driver(name, device)
    try:  # a device the framework lacks skips, and never runs on the CPU in its name
        driver.require_device()
    except RuntimeError as e:
        pytest.skip(str(e))
    return driver


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest):
    """A driver for every backend (NumPy and array-api-strict have no autodiff)."""
    return _driver(request, request.param)


@pytest.fixture(params=[b for b in BACKENDS if b not in ("jax", "tensorflow")])
def grid_backend(request: pytest.FixtureRequest):
    """Every backend id but eager JAX and TensorFlow, which run the same code as their
    traced ids (jax-jit, tensorflow-function) and take the K = 3 and 1000 part of the grid."""
    return _driver(request, request.param)


@pytest.fixture(params=[b for b in BACKENDS if not DRIVERS[b].traced])
def eager_backend(request: pytest.FixtureRequest):
    """The backends that run eagerly (for tests that call smoothloss outside any trace)."""
    return _driver(request, request.param)


@pytest.fixture(params=["jax", "tensorflow"])
def eager_framework(request: pytest.FixtureRequest):
    """Eager JAX and TensorFlow."""
    return _driver(request, request.param)


@pytest.fixture(params=["numpy", "array_api_strict"])
def array_backend(request: pytest.FixtureRequest):
    """The backends without autodiff (where the closed form is the only gradient)."""
    return _driver(request, request.param)


@pytest.fixture(params=FRAMEWORK_BACKENDS)
def framework(request: pytest.FixtureRequest):
    """A driver for every backend with autodiff."""
    return _driver(request, request.param)


@pytest.fixture
def driver_for(request: pytest.FixtureRequest):
    """Make a driver by name inside a test (for pairwise comparisons)."""
    return lambda name: _driver(request, name)


@pytest.fixture
def mode():
    """Set smoothloss's compile mode inside a test (``mode("always")``); the mode in force
    before the test comes back after it."""
    import smoothloss

    previous = smoothloss.compile_mode()
    yield smoothloss.set_compile_mode
    smoothloss.set_compile_mode(previous)
