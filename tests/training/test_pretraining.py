"""Pretraining: content-aware negative sampling, the outputs of `pemt pretrain`, data-parallel runs that stay in
step, exact resumption after a kill, and that both objectives learn on the demo data."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pemt import PemtForPreTraining
from pemt.model.objectives import sample_negatives
from pemt.training import pretrain

# Plumbing tests run the tiny preset for a handful of steps: they check what the loop does, not what it learns.
TINY_RUN = ["--model_config", "tiny", "--per_device_train_batch_size", "4", "--logging_steps", "1", "--no_progress_bar"]


def pretrain_args(output_dir: Path, demo_data: Path, cache: Path, *extra: str) -> list[str]:
    return ["--output_dir", str(output_dir), "--train_dir", str(demo_data), "--cache_dir", str(cache), *extra]


def run_summary(output_dir: Path, process: int = 0) -> dict:
    return json.loads((output_dir / f"run_summary_process{process}.json").read_text())


# -- content-aware negative sampling -------------------------------------------------------------------------------


def similarity_pool(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchor 0 and a pool of 40 embeddings: 0 is the anchor, 1-10 lie near it, 11-39 point elsewhere."""
    anchor = torch.randn(16, generator=generator)
    near = anchor + 0.1 * torch.randn(10, 16, generator=generator)
    far = torch.randn(29, 16, generator=generator)
    return anchor[None], torch.cat([anchor[None], near, far])


def own_ids(n: int) -> torch.Tensor:
    """Source ids of `n` distinct segments: clip i, segment 0."""
    return torch.stack([torch.arange(n), torch.zeros(n, dtype=torch.long)], dim=1)


@pytest.mark.parametrize("variant", ["similar", "dissimilar", "uniform", "sequence"])
def test_negatives_never_include_the_anchor(variant):
    generator = torch.Generator().manual_seed(0)
    pool = torch.randn(6, 8, generator=generator)
    ids = own_ids(6)
    torch.manual_seed(0)
    for _ in range(50):
        # More negatives than other candidates: the draw must repeat candidates rather than fall back on the anchor.
        drawn = sample_negatives(pool, pool, ids, ids, num_negatives=8, variant=variant, temperature=0.1)
        assert drawn.shape == (6, 8)
        assert not (drawn == torch.arange(6)[:, None]).any()


def test_sequence_negatives_come_from_the_anchors_own_clip():
    # 3 clips x 4 segments; clip 2's audio is also held by a swapped row 3 (source clip 2): copies of the anchor are
    # excluded, the other segments of its source clip are the only candidates.
    ids = torch.tensor([[clip, t] for clip in (0, 1, 2, 2) for t in range(4)])
    pool = torch.randn(16, 8)
    anchor_rows = torch.tensor([0, 5, 9, 14])
    torch.manual_seed(0)
    drawn = sample_negatives(pool[anchor_rows], pool, ids[anchor_rows], ids, 6, "sequence", 1.0)
    assert (ids[drawn][..., 0] == ids[anchor_rows][:, None, 0]).all()
    assert (ids[drawn][..., 1] != ids[anchor_rows][:, None, 1]).all()
    # Negative control: uniform sampling does reach other clips.
    drawn = sample_negatives(pool[anchor_rows], pool, ids[anchor_rows], ids, 6, "uniform", 1.0)
    assert (ids[drawn][..., 0] != ids[anchor_rows][:, None, 0]).any()


def draw_counts(variant: str, temperature: float = 0.1, draws: int = 400) -> torch.Tensor:
    """How often each pool index was drawn as a negative of anchor 0, 4 negatives per draw."""
    anchor, pool = similarity_pool(torch.Generator().manual_seed(1))
    ids = own_ids(pool.shape[0])
    torch.manual_seed(2)
    counts = torch.zeros(pool.shape[0])
    for _ in range(draws):
        drawn = sample_negatives(anchor, pool, ids[:1], ids, num_negatives=4, variant=variant, temperature=temperature)
        counts += torch.bincount(drawn.flatten(), minlength=pool.shape[0])
    return counts


def test_similar_first_favours_near_candidates_and_dissimilar_first_far_ones():
    near, far = slice(1, 11), slice(11, None)
    similar, dissimilar = draw_counts("similar"), draw_counts("dissimilar")
    # 10 of the 39 candidates are near: a uniform draw would give them about a quarter of the picks.
    assert similar[near].sum() / similar.sum() > 0.6
    assert dissimilar[near].sum() / dissimilar.sum() < 0.1
    assert similar[far].mean() < dissimilar[far].mean()


def test_uniform_draws_every_candidate_about_equally():
    counts = draw_counts("uniform")[1:]
    expected = counts.sum() / counts.numel()  # 1600 picks over 39 candidates: about 41 each
    # Binomial standard deviation is about 6.3; 4.5 of them leaves room across all 39 candidates.
    assert (counts - expected).abs().max() < 4.5 * expected.sqrt()


# -- what a run leaves behind, data parallelism, resumption ----------------------------------------------------------


def run_pretrain_subprocess(
    args: list[str], launcher: list[str] | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Runs pretraining in a fresh interpreter (as a user would), failing the test with its output on error."""
    command = [sys.executable, *(launcher or []), "-m", "pemt.training.pretrain", *args]
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def kill_at_first_checkpoint(command: list[str], output_dir: Path) -> None:
    """Starts `command` (a training run writing to `output_dir`) and kills it with SIGKILL as soon as its first
    complete checkpoint exists, failing the test if the run ends first."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not list(output_dir.glob("checkpoints/checkpoint_*/pemt_checkpoint.json")):
        assert process.poll() is None, "the run ended before its first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before it could be killed; give it more steps"
    process.send_signal(signal.SIGKILL)
    process.wait()


def test_kill_and_resume_gives_the_weights_of_an_uninterrupted_run(tmp_path, demo_data, preprocessing_cache):
    steps = ["--max_steps", "16", "--checkpointing_steps", "3", "--seed", "3"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_pretrain_subprocess(pretrain_args(straight, demo_data, preprocessing_cache, *TINY_RUN, *steps))

    # The uninterrupted run also shows what a run writes.
    for name in ("model.safetensors", "config.json", "processor_config.json", "pretraining.png", "history.jsonl",
                 "eval_results.json"):
        assert (straight / name).exists(), name
    assert list((straight / "logs").rglob("events.out.tfevents.*")), "no TensorBoard events under logs/"
    assert PemtForPreTraining.from_pretrained(straight).config.hidden_size == 32
    history = [json.loads(line) for line in (straight / "history.jsonl").read_text().splitlines()]
    assert [row["step"] for row in history if "train/loss" in row] == list(range(1, 17))
    assert "eval/cpp_accuracy" in history[-1] and "eval/mep_accuracy" in history[-1]

    command = [sys.executable, "-m", "pemt.training.pretrain", *pretrain_args(resumed, demo_data, preprocessing_cache, *TINY_RUN, *steps)]
    kill_at_first_checkpoint(command, resumed)
    assert not (resumed / "run_summary_process0.json").exists()

    run_pretrain_subprocess(
        pretrain_args(resumed, demo_data, preprocessing_cache, *TINY_RUN, *steps, "--resume_from_checkpoint", "latest")
    )
    assert run_summary(resumed)["global_step"] == 16
    assert run_summary(resumed)["weights_sha256"] == run_summary(straight)["weights_sha256"]
    history = [json.loads(line) for line in (resumed / "history.jsonl").read_text().splitlines()]
    assert [row["step"] for row in history if "train/loss" in row] == list(range(1, 17))


def two_cpu_processes_launcher() -> list[str]:
    """`python -m` arguments of an `accelerate launch` of two processes on a free port; run it with
    `ACCELERATE_USE_CPU=true`. `accelerate launch --cpu` starts a single process (several need mpirun); the torchrun
    launcher behind `--multi_gpu` starts two, and ACCELERATE_USE_CPU makes them a CPU (gloo) group even where GPUs
    exist."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return [
        "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port),
    ]


def test_two_processes_train_in_step(tmp_path, demo_data, preprocessing_cache):
    run_pretrain_subprocess(
        pretrain_args(tmp_path, demo_data, preprocessing_cache, *TINY_RUN, "--max_steps", "4", "--checkpointing_steps", "2"),
        launcher=two_cpu_processes_launcher(),
        env={"ACCELERATE_USE_CPU": "true"},
    )
    first, second = run_summary(tmp_path, 0), run_summary(tmp_path, 1)
    assert first["num_processes"] == second["num_processes"] == 2
    assert first["global_step"] == second["global_step"] == 4
    assert first["samples_seen"] == 4 * 2 * 4  # steps x processes x clips per device
    assert first["weights_sha256"] == second["weights_sha256"]


# -- learning -----------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0])
def test_pretraining_the_small_model_learns_masked_embedding_prediction(tmp_path, demo_data, preprocessing_cache, seed):
    metrics = pretrain.main(
        pretrain_args(
            tmp_path, demo_data, preprocessing_cache, "--model_config", "small", "--max_steps", "250", "--seed", str(seed),
            "--per_device_train_batch_size", "16", "--per_device_eval_batch_size", "8", "--checkpointing_steps", "1000",
            "--logging_steps", "25", "--no_progress_bar",
        )
    )
    # Held-out (test split) accuracy; chance is 1 / (8 negatives + 1) = 0.11. This run reached 0.29, 0.30 and 0.23 at
    # seeds 0, 1 and 2; 0.17 (1.5x chance) stays below the worst of them by about the seeds' spread.
    # Correct pair prediction is not asserted: on the demo data it leaves chance only after ~250 steps (0.61
    # held-out at 300-350 steps on the full demo set), later than this test's budget allows.
    assert metrics["mep_accuracy"] >= 0.17, metrics


def test_evaluation_scores_every_model_with_the_same_sampler():
    # Two models with identical weights that were configured with different samplers get identical held-out metrics:
    # the evaluation draws masks, swaps and negatives itself.
    from accelerate import Accelerator

    from pemt import PemtConfig

    generator = torch.Generator().manual_seed(0)
    config = PemtConfig.from_preset("tiny", mask_probability=0.5)
    side = config.eval_crop_size
    batches = [
        {
            "pixel_values": torch.randn(6, 3, 3, config.frames_per_segment, side, side, generator=generator),
            "audio_values": torch.randn(6, 3, 1, config.num_mel_bins, config.audio_frames, generator=generator),
            "visual_segment_mask": torch.ones(6, 3, dtype=torch.long),
            "audio_segment_mask": torch.ones(6, 3, dtype=torch.long),
            "labels": torch.zeros(6, dtype=torch.long),
        }
        for _ in range(3)
    ]
    torch.manual_seed(0)
    similar = PemtForPreTraining(config)
    dissimilar = PemtForPreTraining(PemtConfig.from_preset("tiny", mask_probability=0.5, negative_sampling="dissimilar"))
    dissimilar.load_state_dict(similar.state_dict())
    accelerator = Accelerator(cpu=True)
    torch.manual_seed(1)
    first = pretrain.evaluate_pretraining(similar, accelerator, [dict(b) for b in batches])
    torch.manual_seed(2)  # the global RNG does not matter either
    second = pretrain.evaluate_pretraining(dissimilar, accelerator, [dict(b) for b in batches])
    assert first == second
    # Negative control: under training-time draws the two configurations score differently.
    torch.manual_seed(3)
    a = similar(**{k: v for k, v in batches[0].items() if k != "labels"})
    torch.manual_seed(3)
    b = dissimilar(**{k: v for k, v in batches[0].items() if k != "labels"})
    assert float(a.loss) != float(b.loss)
