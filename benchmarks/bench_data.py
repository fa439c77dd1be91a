"""Training data at paper settings: how fast on-the-fly decoding feeds training from raw 720p sources and from
prepared shards (`pemt prepare`), against the floor (PyAV decoding the same frames and audio alone); what a
prepared 30-s clip costs on disk; and the data loader's peak memory with a 100-clip and a 10,000-clip manifest.

    python benchmarks/bench_data.py [--samples 12] [--seconds 30] [--workdir /tmp/pemt_bench_data]

Per core: CPU seconds per sample measured in-process (`time.process_time`), which a busy machine does not inflate
the way wall time is; the data-loader rows give wall-clock samples/s with 1 and 2 workers (those do depend on the
machine's load, printed beside them). A training sample is what training's data loader produces: uint8 crops
(`do_normalize=False`), normalised on the training device; the float sample normalised in the worker (the path
before this change, and the processor's default) is timed beside it. The floor is the cheaper of PyAV's two ways to
decode: FFmpeg's automatic frame threading, and one thread per clip (as pemt's data-loader workers decode); each
per-core figure is the least of `--repeats` rounds, its measures taken in turn. Writes
benchmarks/results/bench_data.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from common import floor_decode, print_table, write_results  # noqa: E402
from media_fixtures import write_media  # noqa: E402

from pemt.data.clips import DECODER_THREADS, ClipDataset, normalize_pixels, sample_generator, stack_clips  # noqa: E402
from pemt.data.loading import load_video_folder  # noqa: E402
from pemt.data.prepare import PrepareSettings, prepare  # noqa: E402
from pemt.model.configuration_pemt import PemtConfig  # noqa: E402
from pemt.model.processing_pemt import PemtProcessor, segment_starts  # noqa: E402



def cpu_seconds_per_sample(fn, samples: int) -> float:
    fn(0)  # warm-up: first open, filter banks, allocations
    begin = time.process_time()
    for i in range(1, samples + 1):
        fn(i)
    return (time.process_time() - begin) / samples


def loader_rate(dataset: ClipDataset, workers: int, samples: int) -> float:
    """Wall-clock samples/s of a DataLoader with `workers` workers (batch 1), after its first sample."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, num_workers=workers, collate_fn=stack_clips, shuffle=False)
    iterator = iter(loader)
    next(iterator)
    begin = time.perf_counter()
    count = 0
    for _ in iterator:
        count += 1
    return count / (time.perf_counter() - begin)


def stream_rate(videos, processor: PemtProcessor, workers: int, samples: int) -> float:
    """Wall-clock samples/s of `--streaming`'s batches (batch 1) with `workers` decoding processes, after the first."""
    from pemt.data.streaming import StreamedBatches, split_stream

    batches = StreamedBatches(split_stream(videos), processor, batch_size=1, num_batches=len(videos), num_workers=workers)
    iterator = iter(batches)
    next(iterator)
    begin = time.perf_counter()
    count = sum(1 for _ in iterator)
    return count / (time.perf_counter() - begin)


def memory_probe(prepared: Path, entries: int, workers: int) -> float:
    """Peak RSS (MB, largest process) of a run reading 16 samples through a DataLoader over a manifest of
    `entries` lines; runs in a fresh interpreter so that nothing else counts."""
    manifest = prepared / "manifest.jsonl"
    line = manifest.read_text().splitlines()[0]
    probe_dir = prepared.parent / f"probe_{entries}"
    probe_dir.mkdir(exist_ok=True)
    (probe_dir / "prepare.json").write_text((prepared / "prepare.json").read_text())
    if not (probe_dir / "shards").exists():
        (probe_dir / "shards").symlink_to(prepared / "shards")
    row = json.loads(line)
    with open(probe_dir / "manifest.jsonl", "w") as f:
        for i in range(entries):
            f.write(json.dumps({**row, "source": f"clip_{i:06d}.mp4"}) + "\n")
    code = f"""
import resource, torch
from pemt.data.clips import ClipDataset, stack_clips
from pemt.data.loading import load_video_folder
from pemt.model.configuration_pemt import PemtConfig
from pemt.model.processing_pemt import PemtProcessor
processor = PemtProcessor.from_model_config(PemtConfig.from_preset("paper"))
dataset = ClipDataset(load_video_folder({str(probe_dir)!r}), processor, training=True, do_normalize=False)
loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers={workers}, collate_fn=stack_clips, shuffle=True)
for i, batch in enumerate(loader):
    if i == 7:
        break
del loader
own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(max(own, children) / 1024)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    return float(done.stdout.strip().splitlines()[-1])


def demo_epochs(workdir: Path) -> dict:
    """One epoch of the demo data (small preset): in-memory (decode once, then crops + SpecAugment per epoch) vs on
    the fly from the raw files and from prepared shards, CPU seconds in this process."""
    from pemt.data.demo import make_demo_data
    from pemt.data.loading import collate, preprocess_dataset

    data = workdir / "demo"
    if not (data / "info.json").exists():
        make_demo_data(data, workers=2)
    processor = PemtProcessor.from_model_config(PemtConfig.from_preset("small"))
    raw = load_video_folder(data)["train"]
    prepared_dir = workdir / "demo_prepared"
    prepare(data, prepared_dir, PrepareSettings.from_model_config(PemtConfig.from_preset("small")), num_proc=2)
    prepared = load_video_folder(prepared_dir)["train"]
    generator = torch.Generator().manual_seed(0)

    begin = time.process_time()
    stored = preprocess_dataset(raw, processor, training=True)  # no cache dir: decoded now, not read from a cache
    preprocess = time.process_time() - begin
    begin = time.process_time()
    for start in range(0, len(stored), 32):
        collate([stored[i] for i in range(start, min(start + 32, len(stored)))], processor, True, generator)
    in_memory = time.process_time() - begin

    def epoch(videos) -> float:
        # As training runs it on a CPU: uint8 samples, normalised in the training process (counted here).
        dataset = ClipDataset(videos, processor, training=True, do_normalize=False)
        begin = time.process_time()
        for start in range(0, len(dataset), 32):
            normalize_pixels(stack_clips([dataset[i] for i in range(start, min(start + 32, len(dataset)))]), processor)
        return time.process_time() - begin

    return {"clips": len(raw), "in_memory_preprocess_s": preprocess, "in_memory_epoch_s": in_memory,
            "on_the_fly_raw_epoch_s": epoch(raw), "on_the_fly_prepared_epoch_s": epoch(prepared)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=12, help="Training samples timed per row (prepared shards).")
    parser.add_argument("--raw_samples", type=int, default=3, help="Training samples timed per row (raw 720p: seconds each).")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--workdir", default="/tmp/pemt_bench_data", help="Media and prepared shards (kept between runs).")
    parser.add_argument("--skip_demo", action="store_true", help="Leave out the demo-data epoch comparison.")
    parser.add_argument("--skip_raw", action="store_true", help="Leave out the raw 720p rows (about a minute each).")
    parser.add_argument("--repeats", type=int, default=2, help="Rounds of the per-core measures; the least is kept.")
    args = parser.parse_args()
    torch.set_num_threads(1)  # per-core figures: one thread, as in a data-loader worker

    workdir = Path(args.workdir)
    sources = workdir / "sources"
    sources.mkdir(parents=True, exist_ok=True)
    source = sources / "clip720.mp4"
    if not source.exists():
        write_media(source, seconds=args.seconds, fps=30, size=(720, 1280), sample_rate=44100, channels=2, textured=True)
    config = PemtConfig.from_preset("paper")
    processor = PemtProcessor.from_model_config(config)
    settings = PrepareSettings.from_model_config(config)
    prepared_dir = workdir / "prepared"
    begin = time.perf_counter()
    transcoded = prepare(sources, prepared_dir, settings)["transcoded"]
    prepare_s = time.perf_counter() - begin if transcoded else float("nan")  # nan: prepared by an earlier run
    prepared_clip = next((prepared_dir / "shards").rglob("*.mp4"))
    clip_mb = prepared_clip.stat().st_size / 1e6

    # Several manifest entries over the one file, so that every sample is a different (index -> placement) draw.
    raw_set = ClipDataset(load_video_folder(sources).select([0] * (args.raw_samples + 1)), processor, training=True, do_normalize=False)
    prepared_set = ClipDataset(load_video_folder(prepared_dir).select([0] * (args.samples + 1)), processor, training=True, do_normalize=False)
    span = processor.timing.span

    def floor(path: Path, threads: int | None):
        def one(i: int) -> None:
            g = sample_generator(0, 0, i)
            starts = segment_starts(args.seconds, span, config.num_segments, training=True, generator=g)[0]
            floor_decode(path, starts, span, threads)
        return one

    def best_of(repeats: int, measures: dict) -> dict:
        """Each measure's least CPU time per sample over `repeats` rounds, the measures taken in turn within a round
        so that a change in the machine's load falls on all of them alike."""
        best = {name: float("inf") for name in measures}
        for _ in range(repeats):
            for name, (fn, samples) in measures.items():
                best[name] = min(best[name], cpu_seconds_per_sample(fn, samples))
        return best

    rows, results = [], {"prepare_s_per_clip": prepare_s, "prepared_clip_mb": clip_mb, "settings": settings.__dict__}
    measured = [("raw 720p", source, raw_set, args.raw_samples), ("prepared", prepared_clip, prepared_set, args.samples)]
    for name, path, dataset, samples in measured[1:] if args.skip_raw else measured:
        video = dataset.videos[0]["video"]
        # The floor is PyAV's cheapest: of FFmpeg's automatic frame threading and one thread per clip (what pemt's
        # data-loader workers use), the one with less CPU per sample.
        cpu = best_of(args.repeats, {
            "floor_auto": (floor(path, None), samples),
            "floor_one_thread": (floor(path, 1), samples),
            "decode": (lambda i: processor.decode(video, training=True, generator=sample_generator(0, 0, i),
                                                  decoder_threads=DECODER_THREADS), samples),
            "pemt": (dataset.__getitem__, samples),
        })
        floor_s = min(cpu["floor_auto"], cpu["floor_one_thread"])
        decode_s, pemt_s = cpu["decode"], cpu["pemt"]
        dataset.do_normalize = True
        float_s = cpu_seconds_per_sample(dataset.__getitem__, samples)
        dataset.do_normalize = False
        # The training process's share: float conversion and normalisation of one sample (a GPU's, on a GPU).
        item = stack_clips([dataset[0]])
        normalize_s = cpu_seconds_per_sample(lambda i: normalize_pixels(item, processor), samples)
        load = os.getloadavg()[0]
        rates = {w: loader_rate(dataset, w, samples) for w in (1, 2)}
        streamed = stream_rate(dataset.videos, processor, 2, samples)
        results[name] = {"stream_2_workers_samples_per_s": streamed, "floor_cpu_s": floor_s,
                         "floor_auto_threads_cpu_s": cpu["floor_auto"], "floor_one_thread_cpu_s": cpu["floor_one_thread"],
                         "decode_cpu_s": decode_s, "pemt_cpu_s": pemt_s,
                         "pemt_float_in_worker_cpu_s": float_s, "normalize_on_device_cpu_s": normalize_s,
                         "loader_samples_per_s": rates, "load_average": load}
        rows.append([name, 1 / cpu["floor_auto"], 1 / cpu["floor_one_thread"], 1 / decode_s, 1 / pemt_s, pemt_s / floor_s, 1 / float_s, 1000 * normalize_s,
                     rates[1], rates[2], streamed, f"{load:.1f}"])
    print(f"paper settings: T={config.num_segments} x {config.frames_per_segment} frames, {config.train_crop_size}^2 crops, "
          f"log-mel {config.num_mel_bins}x{config.audio_frames}; {args.seconds:.0f}-s 1280x720 h264/aac source (scrolling noise)")
    print_table(
        ["source", "floor /s/core (FFmpeg threads)", "floor /s/core (1 thread)", "pemt decode only /s/core",
         "pemt samples/s/core", "x floor (the cheaper)",
         "float in worker /s/core", "normalise on device ms (CPU)", "loader 1 worker /s", "loader 2 workers /s", "--streaming 2 workers /s", "load avg"],
        rows,
    )
    print(f"prepared 30-s clip: {clip_mb:.2f} MB ({settings.short_side}p short side, {settings.fps:g} fps, GOP {settings.gop}, "
          f"mono AAC {settings.sampling_rate} Hz); prepare took {prepare_s:.1f} s wall for it (nan: prepared by an earlier run)")

    memory = {n: memory_probe(prepared_dir, n, workers=2) for n in (100, 10_000)}
    results["peak_rss_mb"] = memory
    print_table(["manifest entries", "peak RSS MB (largest process, 2 workers)"], [[n, m] for n, m in memory.items()])

    if not args.skip_demo:
        demo = demo_epochs(workdir)
        results["demo"] = demo
        print_table(
            ["demo data (small preset)", "CPU seconds"],
            [[f"in-memory: decode once ({demo['clips']} clips)", demo["in_memory_preprocess_s"]],
             ["in-memory: one epoch (crops + SpecAugment)", demo["in_memory_epoch_s"]],
             ["on the fly, raw files: one epoch", demo["on_the_fly_raw_epoch_s"]],
             ["on the fly, prepared: one epoch", demo["on_the_fly_prepared_epoch_s"]]],
        )
    print(f"load average during the run: {os.getloadavg()} on {os.cpu_count()} cores")
    results["peak_rss_self_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    write_results("bench_data", results)


if __name__ == "__main__":
    main()
