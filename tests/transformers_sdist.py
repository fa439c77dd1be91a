"""transformers' own common model tests, taken from the sdist of the installed transformers version at test time.

`ModelTesterMixin` (tests/test_modeling_common.py) and `ConfigTester` (tests/test_configuration_common.py) are the
standard every model family in transformers is held to, but they ship only in the source distribution, not in the
wheel. `load_common_tests()` downloads that sdist once with pip (cached under pytest's cache directory), extracts the
two files, and imports them as the package `transformers_common_tests`. Nothing of it is copied into this repository.

The sdist does not include three helper modules those files import (tests/exporters, tests/generation, tests/utils);
stand-ins of ours are registered in their place:
- `GenerationTesterMixin`: an empty class. PEMT does not generate, and ModelTesterMixin only asks whether a tester
  inherits it (it must not, for a model that cannot generate).
- `ExportTesterMixin`: an empty base class; its torch.export test is replaced by one of ours in the test module.
- `config_common_kwargs`: non-default values for the attributes every `PreTrainedConfig` takes, for
  `ConfigTester.check_config_arguments_init`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import types
from pathlib import Path

import transformers

PACKAGE = "transformers_common_tests"
FILES = ("test_modeling_common.py", "test_configuration_common.py")
CACHE = Path(os.environ.get("PEMT_TRANSFORMERS_SDIST_CACHE", Path(__file__).parents[1] / ".pytest_cache" / "d" / "transformers-sdist"))


class SdistUnavailable(RuntimeError):
    """The sdist could not be downloaded (no access to the package index)."""


def _sdist_tests_dir() -> Path:
    """Folder holding the two test files of the installed version's sdist; downloads and extracts them once."""
    version = transformers.__version__
    target = CACHE / version / "tests"
    if all((target / name).is_file() for name in (*FILES, "__init__.py")):
        return target
    downloads = CACHE / version / "download"
    downloads.mkdir(parents=True, exist_ok=True)
    archive = downloads / f"transformers-{version}.tar.gz"
    if not archive.is_file():
        command = [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
                   f"transformers=={version}", "-d", str(downloads)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
        if result.returncode != 0 or not archive.is_file():
            raise SdistUnavailable(f"pip could not download the transformers {version} sdist:\n{result.stderr[-1500:]}")
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        for name in FILES:
            member = tar.getmember(f"transformers-{version}/tests/{name}")
            (target / name).write_bytes(tar.extractfile(member).read())
    # The repository's tests/ is a package with an empty __init__.py, which test_configuration_common.py loads by path;
    # the sdist leaves that file out.
    (target / "__init__.py").write_text("")
    return target


def _stand_in(name: str, **attributes) -> None:
    module = types.ModuleType(f"{PACKAGE}.{name}")
    module.__dict__.update(attributes)
    sys.modules[module.__name__] = module


def _config_common_kwargs() -> dict:
    """A non-default value for each attribute `PreTrainedConfig.__init__` takes from every model's config."""
    import torch

    return {
        "return_dict": False,
        "output_hidden_states": True,
        "output_attentions": True,
        "dtype": torch.float16,
        "tie_word_embeddings": False,
        "chunk_size_feed_forward": 5,
        "architectures": ["PemtTestArchitecture"],
        "finetuning_task": "classification",
        "id2label": {0: "a", 1: "b"},
        "label2id": {"a": 0, "b": 1},
        "problem_type": "regression",
    }


def load_common_tests() -> types.SimpleNamespace:
    """Returns `ModelTesterMixin`, `ConfigTester`, `floats_tensor` and `ids_tensor` from the installed version's
    sdist. Raises [`SdistUnavailable`] when it cannot be downloaded."""
    if PACKAGE not in sys.modules:
        package = types.ModuleType(PACKAGE)
        package.__path__ = [str(_sdist_tests_dir())]
        sys.modules[PACKAGE] = package
        for sub in ("exporters", "generation", "utils"):
            _stand_in(sub)
            sys.modules[f"{PACKAGE}.{sub}"].__path__ = []
        _stand_in("exporters.test_export", ExportTesterMixin=type("ExportTesterMixin", (), {}))
        _stand_in("generation.test_utils", GenerationTesterMixin=type("GenerationTesterMixin", (), {}))
        _stand_in("utils.test_configuration_utils", config_common_kwargs=_config_common_kwargs())
    import importlib

    modeling = importlib.import_module(f"{PACKAGE}.test_modeling_common")
    configuration = importlib.import_module(f"{PACKAGE}.test_configuration_common")
    return types.SimpleNamespace(
        ModelTesterMixin=modeling.ModelTesterMixin,
        ConfigTester=configuration.ConfigTester,
        floats_tensor=modeling.floats_tensor,
        ids_tensor=modeling.ids_tensor,
    )
