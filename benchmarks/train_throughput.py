"""Training throughput (pairs/s) in one run on this machine: the course's Trainer vs a bare PyTorch loop, fp32 vs bf16.

The fixed config: the course's base model (all-MiniLM-L6-v2, max length 256), MNRL, the course's training pairs
(experts + filtered synthetic), `--batch-size` pairs per step. Each setting runs `--warmup` steps, then is timed over
`--steps` steps (CUDA synchronised). The bare loop is the ceiling: texts tokenized once beforehand, no Trainer, no
evaluator, no logging; the Trainer run is what notebook 05 and `embtune run` do (minus their dev evaluations).

Each setting runs in a fresh Python process (one setting's memory and caches never slow the next). The Trainer is
timed with the course's loader settings (`train.loader_flags`: tokenizing DataLoader workers on a GPU, fused AdamW)
and once more with no workers, tokenizing in the main process, to show what the workers buy. `--profile` adds a
torch-profiler pass over the Trainer's timed steps: how busy the GPU was, and where the time went.

Usage: `.venv/bin/python benchmarks/train_throughput.py [--batch-size 512] [--steps 20] [--profile]`; on a CPU the
defaults are smaller. Compare ratios from one run (these machines are noisy), not times across runs.
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


def course_pairs(n: int) -> list[dict]:
    """The first n of the course's training pairs, repeated if there are fewer (throughput does not need new ones)."""
    base = models.load_model(MODEL, verbose=False)
    beir = data.course_data(base.tokenizer, mode="default")
    pairs = train.sample_rows(train.training_pairs(beir, base, "both"), None)
    corpus = data.split_corpus(beir, "train")
    rows = (pairs * (n // len(pairs) + 1))[:n]
    return [{"anchor": p["query"], "positive": corpus[p["chunk_id"]]["text"]} for p in rows]


def bare_loop(rows: list[dict], batch_size: int, steps: int, warmup: int, precision: str) -> float:
    """Pairs per second of forward + MNRL + backward + AdamW over pre-tokenized batches."""
    model = models.load_model(MODEL, verbose=False)
    model.max_seq_length = 256
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
    return steps * batch_size / (time.perf_counter() - start)


def trainer_run(
    rows: list[dict],
    batch_size: int,
    steps: int,
    warmup: int,
    precision: str,
    workers: int | None = None,
    profile: bool = False,
) -> float:
    """Pairs per second of SentenceTransformerTrainer (the course's arguments), timed between step ends."""
    from datasets import Dataset
    from sentence_transformers.sentence_transformer.trainer import SentenceTransformerTrainer
    from transformers import TrainerCallback

    model = models.load_model(MODEL, verbose=False)
    model.max_seq_length = 256
    ends: list[float] = []
    profiler = _profiler(warmup, steps) if profile else None

    class Timer(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001 - the Trainer's signature
            _sync(model.device)
            ends.append(time.perf_counter())
            if profiler is not None:
                profiler.step()

    dataset = Dataset.from_list(rows[: (steps + warmup) * batch_size])
    with TemporaryDirectory() as tmp:
        args = train.training_args(
            Path(tmp),
            batch_size=batch_size,
            learning_rate=5e-5,
            max_steps=steps + warmup,
            bf16=precision == "bf16",
            fp16=False,
            **({} if workers is None else _workers(workers)),
        )
        trainer = SentenceTransformerTrainer(
            model=model, args=args, train_dataset=dataset, loss=losses.make_loss("mnrl", model), callbacks=[Timer()]
        )
        train.quiet(trainer)
        if profiler is not None:
            profiler.start()
        trainer.train()
    wall = ends[warmup + steps - 1] - ends[warmup - 1]
    if profiler is not None:
        profiler.stop()
        _report_profile(profiler, wall)
    return steps * batch_size / wall


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


def _report_profile(profiler: torch.profiler.profile, wall_s: float) -> None:
    """GPU busy share of the timed steps' wall time, then the operators that took the most time."""
    events = profiler.key_averages()
    kernels = [e for e in events if not e.key.startswith("ProfilerStep")]  # a step's row totals its kernels again
    device_us = sum(getattr(e, "self_device_time_total", 0) for e in kernels)
    if device_us:
        busy = device_us / 1e6
        print(f"profile: GPU kernels busy {busy:.2f} s of {wall_s:.2f} s wall ({100 * busy / wall_s:.0f}%)")
        print(events.table(sort_by="self_device_time_total", row_limit=8, max_name_column_width=48))
    print(events.table(sort_by="self_cpu_time_total", row_limit=8, max_name_column_width=48), flush=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


SETTINGS = {  # name -> (function, keyword arguments); workers None = the course's loader settings
    "bare loop": (bare_loop, {}),
    "Trainer": (trainer_run, {}),
    "Trainer, no workers": (trainer_run, {"workers": 0}),
}


def measure_one(args: argparse.Namespace) -> None:
    """Child process: time one setting and print its pairs/s as a JSON line."""
    global MODEL
    MODEL = args.model
    name, precision = args.one.split("|")
    fn, kwargs = SETTINGS[name]
    if args.profile and fn is trainer_run and kwargs.get("workers") is None:
        kwargs = {**kwargs, "profile": True}
    rows = course_pairs((args.steps + args.warmup) * args.batch_size)
    print("RESULT " + json.dumps(fn(rows, args.batch_size, args.steps, args.warmup, precision, **kwargs)), flush=True)


def run_child(args: argparse.Namespace, name: str, precision: str) -> float | None:
    """Run one setting in a fresh process; its pairs/s, or None (with its error shown) if it failed."""
    argv = [sys.executable, __file__, "--one", f"{name}|{precision}", "--model", args.model]
    argv += ["--batch-size", str(args.batch_size), "--steps", str(args.steps), "--warmup", str(args.warmup)]
    argv += ["--profile"] if args.profile and precision == args.precisions.split(",")[-1] else []
    proc = subprocess.run(argv, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line.removeprefix("RESULT "))
        print("   ", line)
    print(f"   {name} {precision} failed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
    return None


def main() -> None:
    cuda = config.detect_device() == "cuda"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=512 if cuda else 32)
    parser.add_argument("--steps", type=int, default=20 if cuda else 4)
    parser.add_argument("--warmup", type=int, default=3 if cuda else 1)
    parser.add_argument("--model", default=MODEL, help="Hub name or local folder (default: the course's base model)")
    parser.add_argument("--precisions", default="fp32,bf16" if cuda else "fp32", help="comma-separated: fp32, bf16")
    parser.add_argument("--profile", action="store_true", help="torch-profile the Trainer in the last precision")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: the child process's setting
    args = parser.parse_args()
    if args.one:
        measure_one(args)
        return
    info = config.describe()
    gpu = torch.cuda.get_device_name() if cuda else f"{info['cpu_count']} CPU cores"
    flags = train.loader_flags()
    print(f"{gpu} | torch {info['torch']} | sentence-transformers {info['sentence-transformers']} | "
          f"transformers {info['transformers']} | batch {args.batch_size}, {args.steps} timed steps after "
          f"{args.warmup} | Trainer loader: {flags['dataloader_num_workers']} workers, "
          f"optim {flags.get('optim', 'default')}")  # fmt: skip
    results = {}
    for precision in args.precisions.split(","):
        for name in SETTINGS:
            if name == "Trainer, no workers" and not flags["dataloader_num_workers"]:
                continue  # the course's Trainer already has no workers here
            if (value := run_child(args, name, precision)) is not None:
                results[(name, precision)] = value
                print(f"{name:>19} {precision}: {value:9.1f} pairs/s", flush=True)
    for precision in args.precisions.split(","):
        for name in ("Trainer", "Trainer, no workers"):
            if (name, precision) in results and ("bare loop", precision) in results:
                ratio = results[(name, precision)] / results[("bare loop", precision)]
                print(f"{name} / bare loop, {precision}: {ratio:.2f}x")
    if ("Trainer", "bf16") in results and ("Trainer", "fp32") in results:
        print(f"bf16 / fp32 (Trainer): {results[('Trainer', 'bf16')] / results[('Trainer', 'fp32')]:.2f}x")


if __name__ == "__main__":
    main()
