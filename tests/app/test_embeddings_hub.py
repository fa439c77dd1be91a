"""The correspondence and feature-extraction pipelines from the tests' local Hub, where pemt is not installed."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import torch
from huggingface_hub import HfApi
from hub_server import hub_env, hub_server  # noqa: F401  (hub_server is a fixture)
from media_fixtures import write_media
from transformers import pipeline

from pemt import PemtConfig, PemtForPreTraining, PemtProcessor
from pemt.hub import save_with_pipelines

LOADER = textwrap.dedent(
    """
    import sys
    sys.modules["pemt"] = None  # as on a machine without pemt
    import torch
    from transformers import pipeline

    repo, clip, other, expected_file = sys.argv[1:5]
    expected = torch.load(expected_file)
    judge = pipeline("audio-visual-correspondence", model=repo, trust_remote_code=True)
    assert type(judge).__module__.startswith("transformers_modules"), type(judge).__module__
    assert type(judge.model).__name__ == "PemtForPreTraining"
    own, dubbed = judge(clip), judge({"video": clip, "audio": other})
    torch.testing.assert_close(own["score"], expected["own"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dubbed["score"], expected["dubbed"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close([s["score"] for s in own["segments"]], expected["segments"], rtol=1e-5, atol=1e-6)
    extractor = pipeline("audio-visual-feature-extraction", model=repo, trust_remote_code=True)
    features = extractor(clip, return_tensors=True)
    torch.testing.assert_close(features["clip_embedding"], expected["clip_embedding"], rtol=1e-5, atol=1e-6)
    print("both pipelines loaded from", repo)
    """
)


def test_pipelines_load_from_the_hub_without_pemt(hub_server, tmp_path):  # noqa: F811
    torch.manual_seed(0)
    config = PemtConfig.from_preset("tiny")
    model, processor = PemtForPreTraining(config).eval(), PemtProcessor.from_model_config(config)
    staging = save_with_pipelines(model, processor, tmp_path / "staging")
    clip = str(write_media(tmp_path / "clip.mp4", seconds=3.0, tone_hz=500.0))
    other = str(write_media(tmp_path / "other.wav", seconds=3.0, video=False, tone_hz=1300.0))
    judge = pipeline("audio-visual-correspondence", model=model, processor=processor)
    own = judge(clip)
    expected = {
        "own": own["score"], "dubbed": judge({"video": clip, "audio": other})["score"],
        "segments": [s["score"] for s in own["segments"]],
        "clip_embedding": pipeline("audio-visual-feature-extraction", model=model, processor=processor)(clip, return_tensors=True)["clip_embedding"],
    }
    assert expected["own"] != expected["dubbed"]
    torch.save(expected, tmp_path / "expected.pt")

    api = HfApi()
    api.create_repo("tester/pemt-pretrained")
    api.upload_folder(folder_path=staging, repo_id="tester/pemt-pretrained")
    files = {entry.path for entry in api.list_repo_tree("tester/pemt-pretrained")}
    assert {"pipeline_correspondence_pemt.py", "pipeline_features_pemt.py", "modeling_pemt.py", "model.safetensors"} <= files

    result = subprocess.run(
        [sys.executable, "-c", LOADER, "tester/pemt-pretrained", clip, other, str(tmp_path / "expected.pt")],
        capture_output=True, text=True, env=hub_env(hub_server, tmp_path / "hf_home"), timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "both pipelines loaded from tester/pemt-pretrained" in result.stdout
