"""Sharing on a Hub-compatible server on 127.0.0.1: push, then load where pemt cannot be imported, then offline."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import torch
from huggingface_hub import HfApi, hf_hub_download
from hub_server import hub_env, hub_server  # noqa: F401  (hub_server is a fixture)
from media_fixtures import write_media

from pemt import PemtConfig, PemtForAudioVisualClassification, PemtProcessor
from pemt.hub import push_to_hub

LABELS = {0: "quiet", 1: "loud", 2: "other"}

# Runs in a fresh interpreter in which `import pemt` fails: everything must come from the repository's own code.
LOADER = textwrap.dedent(
    """
    import sys
    sys.modules["pemt"] = None  # pemt is installed in this venv; make it unimportable, as on a user's machine
    try:
        import pemt
    except ImportError:
        pass
    else:
        raise SystemExit("pemt is still importable")
    import torch
    from transformers import AutoModelForVideoClassification, AutoProcessor, pipeline

    repo, clip, expected_file = sys.argv[1:4]
    expected = torch.load(expected_file)
    model = AutoModelForVideoClassification.from_pretrained(repo, trust_remote_code=True).eval()
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    processor = AutoProcessor.from_pretrained(repo, trust_remote_code=True)
    inputs = processor(videos=clip, return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
    # Bit-equality across processes is not promised by the CPU kernels (thread scheduling); float32 rounding is.
    torch.testing.assert_close(logits, expected["logits"], rtol=1e-5, atol=1e-6)
    classifier = pipeline("audio-visual-classification", model=repo, trust_remote_code=True)
    ranking = classifier(clip, top_k=3)
    assert [entry["label"] for entry in ranking] == expected["labels"], ranking
    print("loaded", repo)
    """
)


def test_pushed_classifier_loads_without_pemt_online_and_offline(hub_server, tmp_path):  # noqa: F811
    torch.manual_seed(0)
    config = PemtConfig.from_preset("tiny", num_labels=3, id2label=LABELS, label2id={v: k for k, v in LABELS.items()})
    model = PemtForAudioVisualClassification(config).eval()
    processor = PemtProcessor.from_model_config(config)
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    (model_dir / "eval_results.json").write_text(json.dumps({"top1_accuracy": 0.5, "num_clips": 3}))

    clip = str(write_media(tmp_path / "clip.mp4", seconds=2.0))
    with torch.no_grad():
        logits = model(**processor(videos=clip)).logits
    ranking = torch.argsort(logits[0], descending=True).tolist()
    torch.save({"logits": logits, "labels": [LABELS[i] for i in ranking]}, tmp_path / "expected.pt")

    # One commit with weights, code, processor, pipeline and card (`pemt push`).
    push_to_hub(model_dir, "tester/pemt-tiny")

    hf_home = tmp_path / "hf_home"
    for offline in (False, True):
        result = subprocess.run(
            [sys.executable, "-c", LOADER, "tester/pemt-tiny", clip, str(tmp_path / "expected.pt")],
            capture_output=True, text=True, env=hub_env(hub_server, hf_home, offline=offline), timeout=300,
        )
        assert result.returncode == 0, f"offline={offline}:\n{result.stderr[-3000:]}"
        assert "loaded tester/pemt-tiny" in result.stdout

    files = {entry.path for entry in HfApi().list_repo_tree("tester/pemt-tiny")}
    assert {"model.safetensors", "config.json", "processor_config.json", "modeling_pemt.py", "pipeline_pemt.py",
            "README.md"} <= files
    card = open(hf_hub_download("tester/pemt-tiny", "README.md")).read()
    assert "pipeline_tag: video-classification" in card and "tester/pemt-tiny" in card


def test_direct_push_to_hub_loads_model_and_processor(hub_server, tmp_path):  # noqa: F811
    torch.manual_seed(1)
    config = PemtConfig.from_preset("tiny", num_labels=3, id2label=LABELS, label2id={v: k for k, v in LABELS.items()})
    model = PemtForAudioVisualClassification(config).eval()
    processor = PemtProcessor.from_model_config(config)
    model.push_to_hub("tester/pemt-direct")
    processor.push_to_hub("tester/pemt-direct")
    script = textwrap.dedent(
        """
        import sys
        sys.modules["pemt"] = None
        import torch
        from transformers import AutoModelForVideoClassification, AutoProcessor
        model = AutoModelForVideoClassification.from_pretrained("tester/pemt-direct", trust_remote_code=True)
        processor = AutoProcessor.from_pretrained("tester/pemt-direct", trust_remote_code=True)
        torch.save({k: v for k, v in model.state_dict().items()}, sys.argv[1])
        print(type(processor).__name__)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "state.pt")],
        capture_output=True, text=True, env=hub_env(hub_server, tmp_path / "hf_home"), timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "PemtProcessor" in result.stdout
    loaded = torch.load(tmp_path / "state.pt")
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(loaded[name], tensor, rtol=0, atol=0, msg=name)
