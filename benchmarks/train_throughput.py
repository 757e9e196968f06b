"""Training throughput (pairs/s) in one run on this machine: the course's Trainer vs a bare PyTorch loop, fp32 vs bf16.

The fixed config: the course's base model (all-MiniLM-L6-v2, max length 256), MNRL, the course's training pairs
(experts + filtered synthetic), `--batch-size` pairs per step. Each setting runs `--warmup` steps, then is timed over
`--steps` steps (CUDA synchronised). The bare loop is the ceiling: texts tokenized once beforehand, no Trainer, no
evaluator, no logging; the Trainer run is what notebook 05 and `embtune run` do (minus their dev evaluations).

Usage: `.venv/bin/python benchmarks/train_throughput.py [--batch-size 512] [--steps 20]`; on a CPU the defaults are
smaller. Compare ratios from one run (these machines are noisy), not times across runs.
"""

from __future__ import annotations

import argparse
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


def trainer_run(rows: list[dict], batch_size: int, steps: int, warmup: int, precision: str) -> float:
    """Pairs per second of SentenceTransformerTrainer (the course's arguments), timed between step ends."""
    from datasets import Dataset
    from sentence_transformers.sentence_transformer.trainer import SentenceTransformerTrainer
    from transformers import TrainerCallback

    model = models.load_model(MODEL, verbose=False)
    model.max_seq_length = 256
    ends: list[float] = []

    class Timer(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001 - the Trainer's signature
            _sync(model.device)
            ends.append(time.perf_counter())

    dataset = Dataset.from_list(rows[: (steps + warmup) * batch_size])
    with TemporaryDirectory() as tmp:
        args = train.training_args(
            Path(tmp),
            batch_size=batch_size,
            learning_rate=5e-5,
            max_steps=steps + warmup,
            bf16=precision == "bf16",
            fp16=False,
            dataloader_num_workers=2 if model.device.type == "cuda" else 0,
        )
        trainer = SentenceTransformerTrainer(
            model=model, args=args, train_dataset=dataset, loss=losses.make_loss("mnrl", model), callbacks=[Timer()]
        )
        train.quiet(trainer)
        trainer.train()
    return steps * batch_size / (ends[-1] - ends[warmup - 1])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    global MODEL
    cuda = config.detect_device() == "cuda"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=512 if cuda else 32)
    parser.add_argument("--steps", type=int, default=20 if cuda else 4)
    parser.add_argument("--warmup", type=int, default=3 if cuda else 1)
    parser.add_argument("--model", default=MODEL, help="Hub name or local folder (default: the course's base model)")
    parser.add_argument("--precisions", default="fp32,bf16" if cuda else "fp32", help="comma-separated: fp32, bf16")
    args = parser.parse_args()
    MODEL = args.model
    info = config.describe()
    gpu = torch.cuda.get_device_name() if cuda else f"{info['cpu_count']} CPU cores"
    print(f"{gpu} | torch {info['torch']} | sentence-transformers {info['sentence-transformers']} | "
          f"batch {args.batch_size}, {args.steps} timed steps after {args.warmup}")  # fmt: skip
    rows = course_pairs((args.steps + args.warmup) * args.batch_size)
    results = {}
    for precision in args.precisions.split(","):
        for name, fn in (("bare loop", bare_loop), ("Trainer", trainer_run)):
            results[(name, precision)] = fn(rows, args.batch_size, args.steps, args.warmup, precision)
            print(f"{name:>9} {precision}: {results[(name, precision)]:9.1f} pairs/s", flush=True)
    for precision in args.precisions.split(","):
        ratio = results[("Trainer", precision)] / results[("bare loop", precision)]
        print(f"Trainer / bare loop, {precision}: {ratio:.2f}x")
    if ("Trainer", "bf16") in results and ("Trainer", "fp32") in results:
        print(f"bf16 / fp32 (Trainer): {results[('Trainer', 'bf16')] / results[('Trainer', 'fp32')]:.2f}x")


if __name__ == "__main__":
    main()
