"""Sharing on the Hub: one commit with the weights (safetensors), the config with `auto_map`, the processor, the
model's code, the pipeline's code and the model card, so that the repository loads where pemt is not installed."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from huggingface_hub import HfApi
from transformers import pipeline

from .model_card import DEFAULT_LICENSE, public_training_arguments, write_model_card
from .model.modeling_pemt import PemtForAudioVisualClassification
from .model.processing_pemt import PemtProcessor

TASK = "audio-visual-classification"
TRAINING_ARGS_FILE = "training_args.json"


def stage_for_upload(
    model_dir: str | Path, staging_dir: str | Path, repo_id: str, license: str = DEFAULT_LICENSE, base_model: str | None = None
) -> Path:
    """Writes everything a Hub repository of the classifier in `model_dir` needs into `staging_dir`: no file there
    names a local path (the training arguments are published without them)."""
    model_dir, staging_dir = Path(model_dir), Path(staging_dir)
    model = PemtForAudioVisualClassification.from_pretrained(model_dir)
    processor = PemtProcessor.from_pretrained(model_dir)
    # Saving through the pipeline records it under `custom_pipelines` in the config and copies its code, which is
    # what `pipeline(TASK, model=repo_id, trust_remote_code=True)` looks for.
    pipeline(TASK, model=model, processor=processor).save_pretrained(staging_dir)
    results_file = model_dir / "eval_results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else None
    args_file = model_dir / TRAINING_ARGS_FILE
    training_args = json.loads(args_file.read_text()) if args_file.exists() else {}
    dataset_name = training_args.get("dataset_name") or training_args.get("train_dir") or training_args.get("train_file")
    write_model_card(
        model, staging_dir, dataset_name, training_args, results, repo_id=repo_id, license=license, base_model=base_model
    )
    if args_file.exists():
        public = public_training_arguments(training_args)
        (staging_dir / TRAINING_ARGS_FILE).write_text(json.dumps(public, indent=2) + "\n")
    for name in ("eval_results.json", "confusion_matrix.png"):
        if (model_dir / name).exists():
            (staging_dir / name).write_bytes((model_dir / name).read_bytes())
    return staging_dir


def push_to_hub(
    model_dir: str | Path,
    repo_id: str,
    private: bool = False,
    token: str | None = None,
    license: str = DEFAULT_LICENSE,
    base_model: str | None = None,
) -> str:
    """Uploads a fine-tuned model directory to `repo_id` in one commit; returns the commit's URL.

    Raises:
        `ValueError`: `model_dir` is not a saved model folder (checked before the Hub is contacted).
    """
    folder = Path(model_dir)
    if not folder.is_dir():
        raise ValueError(f"{folder}: no such folder; give the directory a fine-tuning run wrote.")
    missing = [name for name in ("config.json", "processor_config.json") if not (folder / name).is_file()]
    if not any(folder.glob("*.safetensors")):
        missing.append("*.safetensors")
    if missing:
        raise ValueError(f"{folder}: not a saved PEMT model (missing {', '.join(missing)}).")
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    with tempfile.TemporaryDirectory() as staging:
        stage_for_upload(model_dir, staging, repo_id, license=license, base_model=base_model)
        commit = api.upload_folder(folder_path=staging, repo_id=repo_id, commit_message="Upload PEMT classifier")
    return str(commit)


PRETRAINED_TASKS = ("audio-visual-correspondence", "audio-visual-feature-extraction")


def save_with_pipelines(model, processor: PemtProcessor, directory: str | Path, tasks: tuple[str, ...] = PRETRAINED_TASKS) -> Path:
    """Saves a pretrained PEMT (weights, code, processor) with several pipelines' code, recorded together under
    `custom_pipelines`, so that each `pipeline(task, model=repo, trust_remote_code=True)` loads where pemt is not
    installed. (`Pipeline.save_pretrained` records only its own task, so the records are merged here; `auto_map`
    also names the backbone, which `AutoModel` - the feature pipeline's model class - resolves.)"""
    directory = Path(directory)
    records = {}
    for task in tasks:
        pipeline(task, model=model, processor=processor).save_pretrained(directory)
        records.update(json.loads((directory / "config.json").read_text()).get("custom_pipelines", {}))
    config = json.loads((directory / "config.json").read_text())
    config["custom_pipelines"] = records
    config.setdefault("auto_map", {})["AutoModel"] = "modeling_pemt.PemtModel"
    (directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    processor.save_pretrained(directory)
    return directory
