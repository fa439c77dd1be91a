"""Fixtures shared by the training, pipeline and Hub tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from pemt.data.demo import make_demo_data


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A reduced demo set (4 classes; 16 training and 6 test clips each), made once per test session."""
    root = tmp_path_factory.mktemp("demo") / "data"
    return make_demo_data(root, train_per_class=16, test_per_class=6, seconds=3.0, workers=2, seed=1)


@pytest.fixture(scope="session")
def preprocessing_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache of preprocessed tensors, so that runs with the same data and processor decode the videos once."""
    return tmp_path_factory.mktemp("pemt_cache")
