"""Shared pytest set-up."""
from __future__ import annotations

import pytest


def pytest_configure(config) -> None:
    """Load yapf's grammar once in the main process, before pytest-xdist starts its workers.

    mmcv imports mmengine, which imports yapf; on its first import after an install yapf rewrites
    its grammar cache (``~/.cache/YAPF``), and two workers doing that at once can read a
    half-written file (``EOFError: Ran out of input`` while collecting tests/test_adapters.py,
    seen on a fresh virtual environment).
    """
    if hasattr(config, "workerinput"):  # an xdist worker: the main process did it
        return
    try:
        import yapf  # noqa: F401
    except Exception:  # not installed (mmcv is optional), or broken: the tests that need it say so
        pass


@pytest.fixture(scope="module")
def one_torch_thread():
    """Torch on one thread for a whole module (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``): tiny
    forwards on a busy machine, where spin-waiting OpenMP threads can make them 100x slower."""
    from extract_inputs import one_thread

    with one_thread():
        yield
