"""Shared pytest fixtures and markers.

- `shared`: the read-only real-data folder (``../shared`` beside the repository, or ``$SFOFUSION_SHARED``); tests
  that take it are skipped, with the reason, on a machine without it. `shared_path('data/MSRS/test')` skips the
  same way when one sub-folder is missing.
- `device`: each test that takes it runs on the CPU and on CUDA; the CUDA case is skipped where there is none.
- `dtype`: float32 and float64, for numerics that must hold in both.
- markers: `slow` (seconds or more; deselected in CI's fast job, run by its slow job: see .ci/run) and `cuda`
  (skipped without a GPU).
"""
from pathlib import Path

import pytest
import torch

from sfofusion.core import shared_dir

NO_SHARED = "the shared data folder is absent (../shared beside the repository, or set SFOFUSION_SHARED)"


def pytest_configure(config):
    config.addinivalue_line('markers', 'cuda: needs a CUDA GPU (skipped without one)')


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available(): return
    skip = pytest.mark.skip(reason='needs a CUDA GPU')
    for item in items:
        if 'cuda' in item.keywords: item.add_marker(skip)


@pytest.fixture(scope='session')
def shared() -> Path:
    "The shared folder (holding data/ and reference/), or a skip naming what is missing."
    sd = shared_dir()
    if sd is None: pytest.skip(NO_SHARED)
    return sd


@pytest.fixture(scope='session')
def shared_path(shared):
    "A function: a path under the shared folder, or a skip naming it when it is absent."
    def get(sub: str) -> Path:
        p = shared / sub
        if not p.exists(): pytest.skip(f"{p} is absent from the shared folder")
        return p
    return get


@pytest.fixture(params=['cpu', pytest.param('cuda', marks=pytest.mark.cuda)])
def device(request) -> torch.device:
    return torch.device(request.param)


@pytest.fixture(params=[torch.float32, torch.float64], ids=['float32', 'float64'])
def dtype(request) -> torch.dtype:
    return request.param
