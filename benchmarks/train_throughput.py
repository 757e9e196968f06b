"""Training throughput (pairs/s) in one run on this machine: the course's Trainer vs a bare PyTorch loop.

The fixed config: the course's base model (all-MiniLM-L6-v2, max length 256), MNRL, the course's training pairs
(experts + filtered synthetic), `--batch-size` pairs per step. Each setting runs `--warmup` steps, then is timed over
`--steps` steps, with the GPU waited for only at the start and the end of the timed steps (as a training run waits
for it only where it reads a number back). Pairs/s counts the pairs the loss really saw (the Trainer's
no-duplicates sampler can make a batch smaller). The bare loop is the ceiling: texts tokenized and put on the device
beforehand, no Trainer, no evaluator, no logging; the Trainer run is what notebook 05 and `embtune run` do (minus
their dev evaluations), with the course's arguments (`train.training_args`).

Each setting runs in a fresh Python process (one setting's memory and caches never slow the next), on the same
training rows (written once by a first process). The Trainer variants put back, one at a time, what the course's
GPU arguments leave out: a loss logged every step (`logging_steps=1`), batches copied to the GPU with a blocking copy
(`accelerator_config.non_blocking=False`), a NaN/inf check of every step's loss (`logging_nan_inf_filter=True`);
each makes the CPU wait for the GPU at least once a step, and the GPU then idles while the CPU readies the next step
(sampling a no-duplicates batch, taking it from a worker, launching the first kernels). The Trainer's lines also
give the time the main process spent taking batches from the DataLoader: with workers, mostly waiting for them
(4 workers could not tokenize batches of 512 pairs as fast as an H200 trains; hence config.MAX_LOADER_WORKERS = 8,
and the "no workers" and "8 workers" variants). `--profile` adds two torch-profiled Trainer runs (not timed for the
table): the arguments before the fix and the course's, each with the GPU's idle time between kernels and the waits
the CPU made.

Usage: `.venv/bin/python benchmarks/train_throughput.py [--batch-size 512] [--steps 30] [--profile] [--settings
"bare loop;Trainer"]` (names from SETTINGS, split by ';'); on a CPU the defaults are smaller. Compare ratios from
one run (these machines are noisy), not times across runs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import torch

from embtune_utils import config, data, losses, models, train

MODEL = config.BASE_MODEL  # --model replaces it (a local folder, e.g. on a machine with no Hub access)
MAX_LENGTH = 256
BEFORE = {"logging_steps": 1, "logging_nan_inf_filter": True, "accelerator_config": {"non_blocking": False}}
WAITS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "aten::_local_scalar_dense")


def course_pairs(n: int) -> list[dict]:
    """The first n of the course's training pairs, repeated if there are fewer (throughput does not need new ones)."""
    base = models.load_model(MODEL, verbose=False)
    beir = data.course_data(base.tokenizer, mode="default")
    pairs = train.sample_rows(train.training_pairs(beir, base, "both"), None)
    corpus = data.split_corpus(beir, "train")
    rows = (pairs * (n // len(pairs) + 1))[:n]
    return [{"anchor": p["query"], "positive": corpus[p["chunk_id"]]["text"]} for p in rows]


def bare_loop(rows: list[dict], batch_size: int, steps: int, warmup: int, precision: str) -> dict:
    """Pairs per second of forward + MNRL + backward + AdamW over pre-tokenized batches already on the device."""
    model = models.load_model(MODEL, verbose=False)
    model.max_seq_length = MAX_LENGTH
    device = model.device
    loss_fn = losses.make_loss("mnrl", model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5)
    tokenize = getattr(model, "preprocess", None) or model.tokenize  # `tokenize` is deprecated from ST 5.7 on
    batches = []
    for start in range(0, (steps + warmup) * batch_size, batch_size):
        chunk = rows[start : start + batch_size]
        batches.append([tokenize([r[c] for r in chunk]) for c in ("anchor", "positive")])
    batches = [[{k: v.to(device) if torch.is_tensor(v) else v for k, v in f.items()} for f in b] for b in batches]
    model.train()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    def step(features: list[dict]) -> None:
        with autocast:
            loss = loss_fn(features, None)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for features in batches[:warmup]:
        step(features)
    _sync(device)
    start = time.perf_counter()
    for features in batches[warmup:]:
        step(features)
    _sync(device)
    wall = time.perf_counter() - start
    shapes = [tuple(f["input_ids"].shape for f in b) for b in batches[warmup:]]
    return _result(shapes, wall)


def trainer_run(
    rows: list[dict],
    batch_size: int,
    steps: int,
    warmup: int,
    precision: str,
    workers: int | None = None,
    overrides: dict | None = None,
    profile: bool = False,
) -> dict:
    """Pairs per second of SentenceTransformerTrainer (the course's arguments, then `overrides`), timed from the end
    of the warm-up steps to the end of the last step, the GPU waited for at those two points only."""
    from datasets import Dataset
    from sentence_transformers.sentence_transformer.trainer import SentenceTransformerTrainer
    from transformers import TrainerCallback

    model = models.load_model(MODEL, verbose=False)
    model.max_seq_length = MAX_LENGTH
    marks: dict[int, float] = {}
    profiler = _profiler(warmup, steps) if profile else None
    fetches = _time_loader_fetches()

    class Timer(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001 - the Trainer's signature
            if state.global_step in (warmup, warmup + steps):
                _sync(model.device)
                marks[state.global_step] = time.perf_counter()
            if profiler is not None:
                profiler.step()

    loss = losses.make_loss("mnrl", model)
    shapes: list[tuple] = []  # (pairs, padded length) of each column the loss saw, step by step: no GPU wait
    loss.register_forward_pre_hook(lambda module, inputs: shapes.append(tuple(f["input_ids"].shape for f in inputs[0])))
    dataset = Dataset.from_list(rows)
    with TemporaryDirectory() as tmp:
        args = train.training_args(
            Path(tmp),
            batch_size=batch_size,
            learning_rate=5e-5,
            max_steps=steps + warmup,
            bf16=precision == "bf16",
            fp16=False,
            **({} if workers is None else _workers(workers)),
            **(overrides or {}),
        )
        trainer = SentenceTransformerTrainer(
            model=model, args=args, train_dataset=dataset, loss=loss, callbacks=[Timer()]
        )
        train.quiet(trainer)
        if profiler is not None:
            profiler.start()
        trainer.train()
    wall = marks[warmup + steps] - marks[warmup]
    if profiler is not None:
        profiler.stop()
        _report_profile(profiler, steps)
    waited = sum(d for start, d in fetches if marks[warmup] <= start < marks[warmup + steps])
    return _result(shapes[warmup : warmup + steps], wall) | {"loader_ms": round(1000 * waited / steps, 1)}


def _time_loader_fetches() -> list[tuple[float, float]]:
    """(start, seconds) of every batch the main process takes from a DataLoader: with workers, the time it waits
    for them (plus sampling the batch's rows); without, the time it tokenizes."""
    from torch.utils.data import dataloader

    fetches: list[tuple[float, float]] = []
    take = dataloader._BaseDataLoaderIter.__next__

    def timed(self):  # noqa: ANN001, ANN202 - the iterator's own signature
        start = time.perf_counter()
        try:
            return take(self)
        finally:
            fetches.append((start, time.perf_counter() - start))

    dataloader._BaseDataLoaderIter.__next__ = timed
    return fetches


def _result(shapes: list[tuple], wall: float) -> dict:
    """Pairs/s over the timed steps, with the mean padded lengths (anchor, positive) the loss saw."""
    pairs = sum(s[0][0] for s in shapes)
    lengths = [round(sum(s[i][1] for s in shapes) / len(shapes), 1) for i in range(len(shapes[0]))]
    return {"pairs_per_s": pairs / wall, "pairs": pairs, "steps": len(shapes), "wall_s": wall, "lengths": lengths}


def _workers(n: int) -> dict:
    """Loader flags for n worker processes (prefetching and persistence exist only with workers)."""
    prefetch = 4 if n else None
    return {"dataloader_num_workers": n, "dataloader_persistent_workers": n > 0, "dataloader_prefetch_factor": prefetch}


def _profiler(warmup: int, steps: int) -> torch.profiler.profile:
    """A profiler that records the Trainer's timed steps only (stepped at each step end)."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    schedule = torch.profiler.schedule(wait=0, warmup=warmup, active=steps, repeat=1)
    return torch.profiler.profile(activities=activities, schedule=schedule)


def _report_profile(profiler: torch.profiler.profile, steps: int) -> None:
    """The GPU's busy and idle time over the profiled steps (union of its kernels and copies), its idle gaps, the
    CPU's waits for the GPU, then the operators that took the most CPU time."""
    events = profiler.events()
    step_spans = [(e.time_range.start, e.time_range.end) for e in events if e.name.startswith("ProfilerStep")]
    device = sorted(
        (e.time_range.start, e.time_range.end)
        for e in events
        if e.device_type == torch.autograd.DeviceType.CUDA and not e.name.startswith("ProfilerStep")
    )
    if step_spans and device:
        t0, t1 = min(s for s, _ in step_spans), max(e for _, e in step_spans)
        merged: list[list[float]] = []
        for start, end in device:
            start, end = max(start, t0), min(end, t1)
            if end <= start:
                continue
            if merged and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        busy = sum(e - s for s, e in merged)
        gaps = sorted((b[0] - a[1] for a, b in zip(merged, merged[1:], strict=False)), reverse=True)
        big = [g for g in gaps if g >= 1000]
        wall = t1 - t0
        print(
            f"profile: {steps} steps in {wall / 1e3:.0f} ms ({wall / steps / 1e3:.1f} ms a step, profiler on): GPU "
            f"busy {busy / 1e3:.0f} ms ({100 * busy / wall:.0f}%), idle {(wall - busy) / steps / 1e3:.1f} ms a step; "
            f"{len(big) / steps:.1f} idle gaps >= 1 ms a step, holding {sum(big) / steps / 1e3:.1f} ms a step "
            f"(largest {', '.join(f'{g / 1e3:.1f}' for g in gaps[:5])} ms)"
        )
    averages = profiler.key_averages()
    waits = [e for e in averages if e.key in WAITS]
    print(
        "profile: CPU waits for the GPU a step: "
        + (
            "; ".join(f"{e.key} x{e.count / steps:.1f}, {e.cpu_time_total / steps / 1e3:.1f} ms" for e in waits)
            or "none"
        )
    )
    print(averages.table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=48), flush=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


SETTINGS = {  # name -> (function, keyword arguments); the Trainer's arguments are the course's, then these
    "bare loop": (bare_loop, {}),
    "Trainer": (trainer_run, {}),
    "Trainer, before the fix": (trainer_run, {"overrides": BEFORE}),
    "Trainer, loss logged every step": (trainer_run, {"overrides": {"logging_steps": 1}}),
    "Trainer, blocking copies": (trainer_run, {"overrides": {"accelerator_config": {"non_blocking": False}}}),
    "Trainer, NaN check every step": (trainer_run, {"overrides": {"logging_nan_inf_filter": True}}),
    "Trainer, no loss logging": (trainer_run, {"overrides": {"logging_strategy": "no"}}),
    "Trainer, no workers": (trainer_run, {"workers": 0}),
    "Trainer, 8 workers": (trainer_run, {"workers": 8}),
}
PROFILED = {"Trainer, before the fix, profiled": "Trainer, before the fix", "Trainer, profiled": "Trainer"}
ORDER = [*SETTINGS, "bare loop", "Trainer"]  # the first two again at the end: the run's noise


def measure_one(args: argparse.Namespace) -> None:
    """Child process: time one setting and print its result as a JSON line."""
    global MODEL
    MODEL = args.model
    name, precision = args.one.split("|")
    fn, kwargs = SETTINGS[PROFILED.get(name, name)]
    if name in PROFILED:
        kwargs = {**kwargs, "profile": True}
    rows = json.loads(Path(args.rows).read_text())
    print("RESULT " + json.dumps(fn(rows, args.batch_size, args.steps, args.warmup, precision, **kwargs)), flush=True)


def dump_rows(args: argparse.Namespace) -> None:
    """Child process: write the course's first --dump-rows training pairs to --rows (every setting reads them)."""
    global MODEL
    MODEL = args.model
    Path(args.rows).write_text(json.dumps(course_pairs(args.dump_rows)))


def run_child(args: argparse.Namespace, name: str, precision: str, rows: Path) -> dict | None:
    """Run one setting in a fresh process; its result, or None (with its error shown) if it failed."""
    argv = [sys.executable, __file__, "--one", f"{name}|{precision}", "--model", args.model, "--rows", str(rows)]
    argv += ["--batch-size", str(args.batch_size), "--steps", str(args.steps), "--warmup", str(args.warmup)]
    proc = subprocess.run(argv, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line.removeprefix("RESULT "))
        print("   ", line)
    print(f"   {name} {precision} failed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-3:]}")
    return None


def main() -> None:
    cuda = config.detect_device() == "cuda"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=512 if cuda else 32)
    parser.add_argument("--steps", type=int, default=30 if cuda else 4)
    parser.add_argument("--warmup", type=int, default=5 if cuda else 1)
    parser.add_argument("--model", default=MODEL, help="Hub name or local folder (default: the course's base model)")
    parser.add_argument("--precisions", default="bf16" if cuda else "fp32", help="comma-separated: fp32, bf16")
    parser.add_argument("--settings", default=";".join(ORDER), help="names from SETTINGS, in order, split by ;")
    parser.add_argument("--profile", action="store_true", help="add torch-profiled Trainer runs (before/after fix)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: the child process's setting
    parser.add_argument("--rows", help=argparse.SUPPRESS)  # internal: the training rows, as JSON
    parser.add_argument("--dump-rows", type=int, help=argparse.SUPPRESS)  # internal: write this many rows to --rows
    args = parser.parse_args()
    if args.dump_rows:
        dump_rows(args)
        return
    if args.one:
        measure_one(args)
        return
    info = config.describe()
    gpu = torch.cuda.get_device_name() if cuda else f"{info['cpu_count']} CPU cores"
    flags = {**train.loader_flags(), "logging_steps": train.logging_steps()}
    print(f"{gpu} | torch {info['torch']} | sentence-transformers {info['sentence-transformers']} | "
          f"transformers {info['transformers']} | batch {args.batch_size}, {args.steps} timed steps after "
          f"{args.warmup} | the course's Trainer flags here: {flags}")  # fmt: skip
    names = args.settings.split(";") + (list(PROFILED) if args.profile else [])
    results: dict[tuple[str, str], list[float]] = {}
    with TemporaryDirectory() as tmp:
        rows = Path(tmp) / "rows.json"
        n = (args.steps + args.warmup + 5) * args.batch_size  # a few batches spare: the sampler may make some smaller
        dump = [sys.executable, __file__, "--model", args.model, "--rows", str(rows), "--dump-rows", str(n)]
        subprocess.run(dump, check=True)
        for precision in args.precisions.split(","):
            for name in names:
                if name == "Trainer, no workers" and not flags["dataloader_num_workers"]:
                    continue  # the course's Trainer already has no workers here
                if (result := run_child(args, name, precision, rows)) is None:
                    continue
                if name not in PROFILED:
                    results.setdefault((name, precision), []).append(result["pairs_per_s"])
                ms = result.get("loader_ms")
                loader = "" if ms is None else f"; main process in DataLoader next() {ms} ms a step"
                print(
                    f"{name:>34} {precision}: {result['pairs_per_s']:8.1f} pairs/s ({result['pairs']} pairs in "
                    f"{result['steps']} steps, {result['wall_s']:.2f} s; mean padded lengths {result['lengths']}"
                    f"{loader})",
                    flush=True,
                )
    for precision in args.precisions.split(","):
        if not (bare := results.get(("bare loop", precision))):
            continue
        ceiling = sum(bare) / len(bare)
        print(f"{precision}: bare loop {ceiling:.1f} pairs/s (mean of {len(bare)}); each setting / bare loop:")
        for (name, p), values in results.items():
            if p == precision and name != "bare loop":
                mean = sum(values) / len(values)
                print(
                    f"{name:>34}: {mean:8.1f} pairs/s, {mean / ceiling:.2f}x"
                    + (f" (mean of {len(values)})" * (len(values) > 1))
                )


if __name__ == "__main__":
    main()
