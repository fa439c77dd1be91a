"""The local hub of ``hub_server.py`` round-trips models like the real Hub: push, load by id, load offline.

Loading happens in fresh subprocesses so that nothing from the pushing process (imported remote code,
patched constants, warm caches) can make a load succeed that would fail for a real user.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi, RepoFile, hf_hub_download, try_to_load_from_cache
from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError
from huggingface_hub.file_download import _CACHED_NO_EXIST
from transformers import BertConfig, BertModel, BertTokenizer, PreTrainedConfig

from hub_server import hub_env, hub_server  # noqa: F401  (hub_server is a fixture)

# A binary file of this size takes the LFS path; it also crosses the Hub's 10 MB LFS threshold.
_BIG_SIZE = 11 * 1024 * 1024

# Runs in a fresh interpreter: loads every pushed repo by id and checks it against what the test saved.
_LOADER = """
import hashlib, sys
from pathlib import Path
import torch
from huggingface_hub import snapshot_download
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedConfig, pipeline

offline, expected = sys.argv[1] == "offline", torch.load(Path(sys.argv[2]) / "expected.pt")

# A plain transformers model, its tokenizer and a pipeline.
bert = expected["bert"]
model = AutoModel.from_pretrained("tester/tiny-bert").eval()
assert AutoConfig.from_pretrained("tester/tiny-bert").hidden_size == 32
with torch.no_grad():
    torch.testing.assert_close(model(input_ids=bert["input_ids"]).last_hidden_state, bert["last_hidden_state"])
tokenizer = AutoTokenizer.from_pretrained("tester/tiny-bert")
assert tokenizer("hello world")["input_ids"] == bert["token_ids"]
# Online, the task comes from the model card's pipeline_tag (model_info); offline it must be given.
extractor = pipeline(task="feature-extraction" if offline else None, model="tester/tiny-bert")
torch.testing.assert_close(torch.tensor(extractor("hello world")), bert["pipeline"])

# Files added with upload_folder, the big one through LFS.
folder = Path(snapshot_download("tester/tiny-bert"))
big = folder / "extra" / "big.bin"
assert big.stat().st_size == bert["big_size"]
assert hashlib.sha256(big.read_bytes()).hexdigest() == bert["big_sha256"]
assert (folder / "extra" / "notes.txt").read_text() == "uploaded with upload_folder\\n"

# A custom-code model: the classes must come from the downloaded code, not the pushing test's package.
toy = expected["toy"]
config = AutoConfig.from_pretrained("tester/toy", trust_remote_code=True)
model = AutoModel.from_pretrained("tester/toy", trust_remote_code=True).eval()
assert "hub_toy_pkg" not in sys.modules
assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
assert config.width == 6
with torch.no_grad():
    torch.testing.assert_close(model(toy["x"]), toy["y"])

# A bare config.
assert PreTrainedConfig.from_pretrained("tester/config-only").hidden_size == 48
print("loaded", "offline" if offline else "online")
"""

_TOY_CONFIG = '''
from transformers import PreTrainedConfig


class ToyConfig(PreTrainedConfig):
    """A config that exists only in this test's temporary package, so loading needs the remote code."""

    model_type = "hub-server-toy"

    def __init__(self, width: int = 4, **kwargs):
        self.width = width
        super().__init__(**kwargs)
'''

_TOY_MODEL = '''
import torch
from transformers import PreTrainedModel

from .configuration_toy import ToyConfig


class ToyModel(PreTrainedModel):
    """One linear layer: enough to check that weights and code both reach the loader."""

    config_class = ToyConfig

    def __init__(self, config: ToyConfig):
        super().__init__(config)
        self.proj = torch.nn.Linear(config.width, config.width)
        self.post_init()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)
'''


def _push_bert(tmp_path: Path) -> dict:
    """Push a tiny BERT, its tokenizer and extra files; return what the loader must get back."""
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37
    )
    model = BertModel(config).eval()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world"] + [f"tok{i}" for i in range(93)]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizer(vocab_file=str(tmp_path / "vocab.txt"))
    model.push_to_hub("tester/tiny-bert")
    tokenizer.push_to_hub("tester/tiny-bert")

    # upload_folder: a model card naming the pipeline task, a text file, and a big binary (LFS) file.
    extra = tmp_path / "extra_upload"
    (extra / "extra").mkdir(parents=True)
    card = "---\nlibrary_name: transformers\npipeline_tag: feature-extraction\n---\n# tiny\n"
    (extra / "README.md").write_text(card)
    (extra / "extra" / "notes.txt").write_text("uploaded with upload_folder\n")
    big = torch.randint(0, 256, (_BIG_SIZE,), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    (extra / "extra" / "big.bin").write_bytes(big.numpy().tobytes())
    HfApi().upload_folder(repo_id="tester/tiny-bert", folder_path=extra, commit_message="extras")

    tree = HfApi().list_repo_tree("tester/tiny-bert", recursive=True)
    files = {entry.path: entry for entry in tree if isinstance(entry, RepoFile)}
    assert files["model.safetensors"].lfs is not None, "binary weights should have gone through LFS"
    assert files["extra/big.bin"].lfs is not None and files["extra/big.bin"].size == _BIG_SIZE
    assert files["config.json"].lfs is None

    input_ids = torch.tensor([[2, 5, 6, 3]])
    with torch.no_grad():
        return {
            "input_ids": input_ids,
            "last_hidden_state": model(input_ids=input_ids).last_hidden_state,
            "token_ids": tokenizer("hello world")["input_ids"],
            "pipeline": model(**tokenizer("hello world", return_tensors="pt")).last_hidden_state,
            "big_size": _BIG_SIZE,
            "big_sha256": hashlib.sha256((extra / "extra" / "big.bin").read_bytes()).hexdigest(),
        }


def _push_custom_code_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """Push a model whose classes live in a temporary package, so loading it needs trust_remote_code."""
    package = tmp_path / "src" / "hub_toy_pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "configuration_toy.py").write_text(textwrap.dedent(_TOY_CONFIG))
    (package / "modeling_toy.py").write_text(textwrap.dedent(_TOY_MODEL))
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    for name in ("hub_toy_pkg", "hub_toy_pkg.configuration_toy", "hub_toy_pkg.modeling_toy"):
        monkeypatch.delitem(sys.modules, name, raising=False)  # forget the package after the test
    from hub_toy_pkg.configuration_toy import ToyConfig
    from hub_toy_pkg.modeling_toy import ToyModel

    ToyConfig.register_for_auto_class()
    ToyModel.register_for_auto_class("AutoModel")
    torch.manual_seed(0)
    model = ToyModel(ToyConfig(width=6)).eval()
    model.push_to_hub("tester/toy")

    names = set(HfApi().list_repo_files("tester/toy"))
    assert {"configuration_toy.py", "modeling_toy.py", "model.safetensors"} <= names
    config_json = json.loads(Path(hf_hub_download("tester/toy", "config.json")).read_text())
    assert config_json["auto_map"]["AutoModel"] == "modeling_toy.ToyModel"

    x = torch.randn(2, 6)
    with torch.no_grad():
        return {"x": x, "y": model(x)}


def _run_loader(tmp_path: Path, url: str, *, offline: bool) -> None:
    """Run the loader in a fresh interpreter whose only source of models is the hub (or its cache)."""
    mode = "offline" if offline else "online"
    result = subprocess.run(
        [sys.executable, "-c", _LOADER, mode, str(tmp_path)],
        env=hub_env(url, tmp_path / "hf_home", offline=offline),
        # Not the test's folders, so that the temporary package is not importable in the child either.
        cwd=tmp_path / "hf_home",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"{mode} load failed:\n{result.stdout}\n{result.stderr}"
    assert f"loaded {mode}" in result.stdout


def test_push_then_load_by_id_online_and_offline(
    hub_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One test with one online and one offline interpreter for every repo: each interpreter spends
    # seconds importing torch and transformers, which is most of this test's time.
    expected = {"bert": _push_bert(tmp_path), "toy": _push_custom_code_model(tmp_path, monkeypatch)}
    PreTrainedConfig(hidden_size=48).push_to_hub("tester/config-only")
    torch.save(expected, tmp_path / "expected.pt")
    (tmp_path / "hf_home").mkdir()

    _run_loader(tmp_path, hub_server, offline=False)
    # Offline, point the child at a closed port as well: everything must come from the cache.
    _run_loader(tmp_path, "http://127.0.0.1:9", offline=True)


def test_missing_repo_and_file_raise_the_hub_errors(hub_server: str) -> None:
    with pytest.raises(RepositoryNotFoundError):
        HfApi().model_info("tester/does-not-exist")
    # Without a namespace the repo goes to the token's user, as on the Hub.
    assert HfApi().create_repo("empty").repo_id == "tester/empty"
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("tester/empty", "processor_config.json")
    # The 404 named the commit, so the absence is cached: what lets transformers skip optional files offline.
    assert try_to_load_from_cache("tester/empty", "processor_config.json") is _CACHED_NO_EXIST
