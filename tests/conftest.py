"""Shared fixtures: hypothesis profiles, devices to run on, float64 for gradient checks."""

import os
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

from tests.helpers import DEVICES, default_dtype

# Derandomized in CI so that a red run is reproducible; no deadline because the first torch
# call of a process is slow and would fail a timing deadline at random.
settings.register_profile(
    "ci", derandomize=True, deadline=None, print_blob=True, max_examples=25,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", deadline=None, max_examples=10, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))



@pytest.fixture(params=DEVICES)
def device(request):
    """Every device test runs on the CPU, and on CUDA when one is present."""
    return torch.device(request.param)


@pytest.fixture
def float64():
    """Make float64 the default dtype for one test and restore the previous default afterwards."""
    with default_dtype(torch.float64):
        yield



@pytest.fixture
def unwritable(tmp_path):
    """A folder that takes no new files: a read-only one, or for root (whom permissions do not
    stop) /sys or /proc where they refuse one."""
    if os.geteuid() != 0:
        folder = tmp_path / "locked"
        folder.mkdir()
        folder.chmod(0o500)
        yield folder
        folder.chmod(0o700)
        return
    for candidate in ("/sys", "/proc"):
        try:
            tempfile.TemporaryFile(dir=candidate).close()
        except OSError:
            yield Path(candidate)
            return
    pytest.skip("no folder here refuses new files")
