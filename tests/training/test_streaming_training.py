"""`--streaming`: pretraining from a `datasets` stream resumes exactly after a kill (the consumed clips are skipped,
not decoded again), across an epoch boundary, with a decoding worker."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.training.test_pretraining import (
    kill_at_first_checkpoint,
    run_pretrain_subprocess,
    run_summary,
    two_cpu_processes_launcher,
)

# 64 demo clips in batches of 8: 8 steps per epoch, so 10 steps cross into the second epoch (new order, new crops).
STREAMING_RUN = [
    "--model_config", "tiny", "--per_device_train_batch_size", "8", "--logging_steps", "1", "--no_progress_bar",
    "--streaming", "--dataloader_num_workers", "1", "--max_steps", "10", "--checkpointing_steps", "3", "--seed", "3",
]


def streaming_args(output_dir: Path, demo_data: Path, *extra: str) -> list[str]:
    return ["--output_dir", str(output_dir), "--train_dir", str(demo_data / "train"), *STREAMING_RUN, *extra]


def test_a_killed_streaming_run_resumes_to_the_weights_of_an_uninterrupted_one(tmp_path, demo_data):
    straight, resumed, in_order = tmp_path / "straight", tmp_path / "resumed", tmp_path / "in_order"
    run_pretrain_subprocess(streaming_args(straight, demo_data))
    history = [json.loads(line) for line in (straight / "history.jsonl").read_text().splitlines()]
    assert [row["step"] for row in history if "train/loss" in row] == list(range(1, 11))

    command = [sys.executable, "-m", "pemt.training.pretrain", *streaming_args(resumed, demo_data)]
    kill_at_first_checkpoint(command, resumed)
    run_pretrain_subprocess(streaming_args(resumed, demo_data, "--resume_from_checkpoint", "latest"))
    assert run_summary(resumed)["global_step"] == 10
    assert run_summary(resumed)["weights_sha256"] == run_summary(straight)["weights_sha256"]

    # Negative control: the weights depend on the stream's order (here: without the shuffle buffer), so equal
    # weights above mean the resumed run saw the same batches.
    run_pretrain_subprocess(streaming_args(in_order, demo_data, "--streaming_shuffle_buffer", "0"))
    assert run_summary(in_order)["weights_sha256"] != run_summary(straight)["weights_sha256"]


def test_two_processes_stream_their_own_parts_in_step(tmp_path, demo_data):
    args = ["--output_dir", str(tmp_path), "--train_dir", str(demo_data / "train"), "--model_config", "tiny",
            "--per_device_train_batch_size", "4", "--no_progress_bar", "--streaming", "--max_steps", "3"]
    run_pretrain_subprocess(args, launcher=two_cpu_processes_launcher(), env={"ACCELERATE_USE_CPU": "true"})
    first, second = run_summary(tmp_path, 0), run_summary(tmp_path, 1)
    assert first["num_processes"] == 2 and first["global_step"] == second["global_step"] == 3
    assert first["samples_seen"] == 3 * 2 * 4
    assert first["weights_sha256"] == second["weights_sha256"]


def test_streaming_does_not_combine_with_in_memory_data():
    from pemt.errors import PemtUsageError
    from pemt.training.data_setup import DataArguments

    with pytest.raises(PemtUsageError, match="--streaming .* --data_mode in_memory"):
        DataArguments(train_dir="x", streaming=True, data_mode="in_memory")
    DataArguments(train_dir="x", streaming=True)  # on the fly: accepted


# -- a data set opened with load_dataset(..., streaming=True) ---------------------------------------------------------


@pytest.fixture(scope="module")
def hub_repo(demo_data, tmp_path_factory) -> Path:
    """16 demo clips and one corrupt row, as a folder laid out like a Hub data set (parquet shards with a `Video`
    and a `ClassLabel` column), which `--dataset_name PATH --streaming` opens as an `IterableDataset` like a Hub id."""
    from tests.data.test_hub_streaming import write_hub_repo

    paths = sorted((demo_data / "train").glob("*/*.mp4"))[::4]
    videos = [{"bytes": path.read_bytes(), "path": path.name} for path in paths] + [{"bytes": b"\0" * 64, "path": "corrupt.mp4"}]
    labels = [i % 2 for i in range(len(videos))]
    return write_hub_repo(tmp_path_factory.mktemp("hub") / "repo", videos, labels, [5, 4, 4, 4])


def hub_streaming_args(output_dir: Path, repo: Path, *extra: str) -> list[str]:
    # 17 rows in batches of 4: a pass ends inside step 5, which reads into the second pass. Without a shuffle
    # buffer: `datasets` waits 5 s after each pass over parquet shards it interleaves with threads (its guard against
    # an Arrow crash), too slow here; a shuffled stream's resumption is tested in tests/data/test_hub_streaming.py.
    return ["--output_dir", str(output_dir), "--dataset_name", str(repo), "--streaming", "--video_column", "clip",
            "--label_column", "kind", "--model_config", "tiny", "--per_device_train_batch_size", "4", "--logging_steps",
            "1", "--no_progress_bar", "--max_steps", "5", "--checkpointing_steps", "3", "--seed", "3",
            "--dataloader_num_workers", "1", "--streaming_shuffle_buffer", "0", *extra]


def test_pretraining_from_a_streamed_data_set_skips_the_corrupt_row_and_resumes_exactly(tmp_path, hub_repo):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_pretrain_subprocess(hub_streaming_args(straight, hub_repo))
    history = [json.loads(line) for line in (straight / "history.jsonl").read_text().splitlines()]
    assert [row["step"] for row in history if "train/loss" in row] == list(range(1, 6))
    skipped = [json.loads(line) for line in (straight / "skipped_train.jsonl").read_text().splitlines()]
    assert skipped and {entry["source"] for entry in skipped} == {"corrupt.mp4"}

    # A fresh process resumed from step 3 reads (without decoding) the 12 rows trained on and reproduces the weights.
    checkpoint = straight / "checkpoints" / "checkpoint_3"
    run_pretrain_subprocess(hub_streaming_args(resumed, hub_repo, "--resume_from_checkpoint", str(checkpoint)))
    assert run_summary(resumed)["global_step"] == 5
    assert run_summary(resumed)["weights_sha256"] == run_summary(straight)["weights_sha256"]


def test_a_stream_of_unknown_length_needs_max_steps(tmp_path, hub_repo):
    from pemt.errors import PemtUsageError
    from pemt.training import pretrain

    args = hub_streaming_args(tmp_path, hub_repo)
    args[args.index("--max_steps"):args.index("--max_steps") + 2] = ["--num_train_epochs", "1"]
    with pytest.raises(PemtUsageError, match="give --max_steps instead of --num_train_epochs"):
        pretrain.main(args)
