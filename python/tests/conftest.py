"""Fixtures of the package's tests. They import the *installed* `tailor` (a wheel built by
maturin and installed with pip, as scripts/test.sh does), never the source tree in python/."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import tailor
import tailor._testing

SOURCE_TREE = Path(__file__).resolve().parent.parent / "tailor"


def pytest_report_header(config):
    return f"tailor {tailor.__version__} from {Path(tailor.__file__).parent}"


def pytest_configure(config):
    here = Path(tailor.__file__).resolve().parent
    if here == SOURCE_TREE.resolve():
        raise pytest.UsageError(
            f"`tailor` was imported from the source tree ({here}); install the wheel "
            "(pip install ./python, or maturin build + pip install) and run pytest from elsewhere"
        )


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """A tiny llama GGUF (2 layers, d_model 64, Q8_0, random weights, a byte-level BPE
    tokenizer and a ChatML template), written once per run."""
    return tailor._testing.write_tiny_model(tmp_path_factory.mktemp("model"), seed=7)


@pytest.fixture(scope="session")
def engine(tiny_model) -> tailor.Engine:
    return tailor.Engine(tiny_model, threads=1)


@pytest.fixture()
def rng(request) -> np.random.Generator:
    """Fresh random inputs each run; the seed is printed on failure (TAILOR_TEST_SEED replays)."""
    seed = int(os.environ.get("TAILOR_TEST_SEED", np.random.SeedSequence().entropy % 2**32))
    request.node.user_properties.append(("seed", seed))
    print(f"seed {seed}")
    return np.random.default_rng(seed)
