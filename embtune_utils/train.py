"""Training: the course's training pairs, SentenceTransformerTrainer runs, and their time and peak memory."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embtune_utils import config, data, evaluate, negatives, synth

SOURCES = ("synthetic", "experts", "both")


class TrainError(ValueError):
    """A training setting the course cannot use; the message names the fix."""


def training_pairs(beir: data.Beir, model: Any, source: str = "both") -> list[dict[str, Any]]:
    """(query, chunk) pairs from the training articles: filtered synthetic queries, the experts' questions, or both."""
    if source not in SOURCES:
        raise TrainError(f"Unknown training source {source!r}: choose one of {', '.join(SOURCES)}.")
    pairs = []
    if source in ("experts", "both"):
        pairs += data.expert_pairs(beir, "train")
    if source in ("synthetic", "both"):
        pairs += synth.course_pairs(beir, model)
    return pairs


def course_negatives(beir: data.Beir, model: Any, source: str = "both") -> list[dict[str, Any]]:
    """Notebook 03's mined rows (negatives.RECIPE) for a source: read from artifacts, or mined now and saved."""
    name = negatives.recipe_name(source)
    rows = negatives.load_rows(name)
    if rows is None:
        rows = negatives.recipe_negatives(training_pairs(beir, model, source), model, data.split_corpus(beir, "train"))
        negatives.save_rows(rows, name)
    return rows


# ---------------------------------------------------------------- time and peak memory


@dataclass
class Usage:
    """Wall time and peak memory of a block; `memory` says what was measured."""

    seconds: float = 0.0
    peak_mb: float = 0.0
    memory: str = ""


def _release_free_memory() -> None:
    """Return freed heap pages to the OS (glibc only), so RSS growth measures what a block really allocates."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc (macOS, Windows): RSS growth is a lower bound
        ctypes.CDLL("libc.so.6").malloc_trim(0)


@contextlib.contextmanager
def track_resources(device: str | None = None, interval_s: float = 0.005) -> Iterator[Usage]:
    """Measure a block: CUDA peak allocated memory on a GPU, else the peak growth of resident memory (sampled)."""
    import torch

    device = device or config.detect_device()
    usage = Usage()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        start = time.perf_counter()
        yield usage
        torch.cuda.synchronize()
        usage.seconds = time.perf_counter() - start
        usage.peak_mb = (torch.cuda.max_memory_allocated() - base) / 2**20
        usage.memory = "CUDA peak allocated above the start"
        return
    import psutil

    process = psutil.Process()
    _release_free_memory()
    base = process.memory_info().rss
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            done.wait(interval_s)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    try:
        yield usage
    finally:
        usage.seconds = time.perf_counter() - start
        done.set()
        sampler.join()
        peak[0] = max(peak[0], process.memory_info().rss)
        usage.peak_mb = (peak[0] - base) / 2**20
        usage.memory = f"peak resident memory above the start (sampled every {interval_s * 1000:.0f} ms)"


# ---------------------------------------------------------------- SentenceTransformerTrainer runs


def precision_flags(precision: str | None = None) -> dict[str, bool]:
    """Trainer flags for the precision config picks for this hardware (bf16 / fp16 / fp32), never hard-coded."""
    precision = precision or config.detect_precision()
    return {"bf16": precision == "bf16", "fp16": precision == "fp16"}


def training_args(output_dir: Path, batch_size: int = 32, learning_rate: float = 2e-5, **overrides: Any) -> Any:
    """SentenceTransformerTrainingArguments with the course's defaults: no duplicate texts in a batch, warmup, seed."""
    from sentence_transformers.sentence_transformer.training_args import (
        BatchSamplers,
        SentenceTransformerTrainingArguments,
    )

    if batch_size < 2:
        raise TrainError("batch_size must be at least 2: in-batch negatives need other pairs in the batch.")
    values: dict[str, Any] = {
        "output_dir": str(output_dir),
        "per_device_train_batch_size": batch_size,
        "learning_rate": learning_rate,
        "num_train_epochs": 1,
        "warmup_ratio": 0.1,
        "lr_scheduler_type": "linear",
        "batch_sampler": BatchSamplers.NO_DUPLICATES,
        "seed": config.SEED,
        "data_seed": config.SEED,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "dataloader_pin_memory": config.detect_device() == "cuda",
        **precision_flags(),
    }
    values.update(overrides)
    return SentenceTransformerTrainingArguments(**values)


def short_run(model: Any, loss: Any, dataset: Any, args: Any) -> dict[str, Any]:
    """Train `model` in place with `loss` on `dataset`; returns the logged losses, time and peak memory."""
    from sentence_transformers.sentence_transformer.trainer import SentenceTransformerTrainer
    from transformers.trainer_callback import PrinterCallback

    if len(dataset) < args.per_device_train_batch_size:
        raise TrainError(
            f"{len(dataset)} training rows is less than one batch of {args.per_device_train_batch_size}: "
            "use more rows or a smaller batch_size."
        )
    config.set_seed()
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset, loss=loss)
    trainer.remove_callback(PrinterCallback)  # the logged losses are returned, not printed step by step
    with track_resources() as usage:
        trainer.train()
    logged = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return {
        "steps": trainer.state.global_step,
        "losses": logged,
        "seconds": usage.seconds,
        "peak_mb": usage.peak_mb,
        "memory": usage.memory,
    }


def dev_scores(model: Any, beir: data.Beir, split: str = "dev") -> dict[str, float]:
    """Per-query NDCG@10 of `model` on a split's questions against that split's chunks (dense retrieval)."""
    run = evaluate.dense_run(model, data.split_corpus(beir, split), beir.split_queries(split))
    per_query = evaluate.per_query_metrics(run, beir.qrels[split], ("ndcg@10",))
    return {qid: m["ndcg@10"] for qid, m in per_query.items()}
