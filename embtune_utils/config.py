"""One place for modes, paths, seeds, device and precision: every notebook and module reads these."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MODES = ("fast", "default", "full")
SEED = 42
BASE_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
GITHUB_REPO = "embtune/embtune"  # where the Colab and Binder badges point
OPENAI_MODEL = os.environ.get("EMBTUNE_OPENAI_MODEL", "gpt-4o-mini")


class ConfigError(ValueError):
    """A setting (environment variable or argument) has a value the course cannot use."""


@dataclass(frozen=True)
class ModeSettings:
    """What one mode changes: how much data each step sees and how hard it works."""

    name: str
    max_articles: int | None  # None = all 98 COVID-QA articles
    max_test_queries: int | None  # None = every expert question on the test articles
    encode_batch_size: int
    live_chunks: int  # chunks that notebook 02 sends to a live generator (the rest replay the cache)
    train_batch_size: int  # pairs per training batch (in-batch negatives: batch size - 1 per question)
    ablation_pairs: int  # training pairs per run in notebook 04's equal-budget loss ablation
    memory_batch: int  # batch size at which notebook 04 measures MNRL vs cached MNRL memory
    compare_pairs: int  # training pairs per run in notebook 05's comparisons (data sources, partial fine-tuning)
    max_train_pairs: int | None  # cap on the final training run's pairs (None = all)
    epochs: int  # passes over the training pairs in the final run (early stopping may end it sooner)
    eval_steps: int  # dev evaluation (and checkpoint) every this many steps
    max_generate_chunks: int | None  # `embtune run`: chunks that get synthetic queries (None = all)


_SETTINGS = {
    # fast: a slice small enough for CI and live demos; claims are still asserted on real data.
    "fast": ModeSettings(
        "fast",
        max_articles=35,
        max_test_queries=150,
        encode_batch_size=32,
        live_chunks=2,
        train_batch_size=16,
        ablation_pairs=64,
        memory_batch=32,
        compare_pairs=32,
        max_train_pairs=96,
        epochs=1,
        eval_steps=2,
        max_generate_chunks=24,
    ),
    # default: the real CPU course, all articles and all test questions.
    "default": ModeSettings(
        "default",
        max_articles=None,
        max_test_queries=None,
        encode_batch_size=32,
        live_chunks=4,
        train_batch_size=32,
        ablation_pairs=256,
        memory_batch=64,
        compare_pairs=384,
        max_train_pairs=None,
        epochs=1,
        eval_steps=10,
        max_generate_chunks=None,
    ),
    # full: everything, bigger batches, for GPUs.
    "full": ModeSettings(
        "full",
        max_articles=None,
        max_test_queries=None,
        encode_batch_size=256,
        live_chunks=64,
        train_batch_size=128,
        ablation_pairs=2048,
        memory_batch=256,
        compare_pairs=2048,
        max_train_pairs=None,
        epochs=3,
        eval_steps=10,
        max_generate_chunks=None,
    ),
}

# Chunking and splitting are the same in every mode, so chunk ids and labels never change with it.
CHUNK_TOKENS = 200  # word pieces per chunk; all-MiniLM-L6-v2 reads at most 256 (with [CLS]/[SEP])
CHUNK_OVERLAP = 32  # word pieces shared by neighbouring chunks
SPLIT_FRACTIONS = {"train": 0.6, "dev": 0.1, "test": 0.3}  # by article, never by question


def get_mode(value: str | None = None) -> str:
    """The course mode: `value`, else $EMBTUNE_MODE, else 'default'; anything else is an error."""
    mode = (value if value is not None else os.environ.get("EMBTUNE_MODE", "default")).strip().lower()
    if mode not in MODES:
        raise ConfigError(
            f"EMBTUNE_MODE={mode!r} is not a mode: use one of {', '.join(MODES)} "
            "(for example `EMBTUNE_MODE=fast make course`)."
        )
    return mode


def settings(mode: str | None = None) -> ModeSettings:
    """The settings of a mode (the current one by default)."""
    return _SETTINGS[get_mode(mode)]


def _looks_like_repo(path: Path) -> bool:
    return (path / "embtune_utils").is_dir() and (path / "data").is_dir()


def repo_root() -> Path:
    """The course folder: $EMBTUNE_HOME, else the first parent of the cwd or of this package that holds data/."""
    if home := os.environ.get("EMBTUNE_HOME"):
        path = Path(home).expanduser().resolve()
        if not _looks_like_repo(path):
            raise ConfigError(
                f"EMBTUNE_HOME={home!r} has no embtune_utils/ and data/: point it at your clone of the course."
            )
        return path
    for start in (Path.cwd().resolve(), Path(__file__).resolve().parent):
        for path in (start, *start.parents):
            if _looks_like_repo(path):
                return path
    raise ConfigError(
        "Cannot find the course folder (one with embtune_utils/ and data/): run from inside your clone, "
        "or set EMBTUNE_HOME to it."
    )


def data_dir() -> Path:
    """Shipped data (read-only in spirit: nothing writes here at run time)."""
    return repo_root() / "data"


def artifacts_dir(mode: str | None = None) -> Path:
    """Where runs write what they build (chunks, embeddings, models), one folder per mode; git ignores it."""
    path = repo_root() / "artifacts" / get_mode(mode)
    path.mkdir(parents=True, exist_ok=True)
    return path


def results_dir(mode: str | None = None) -> Path:
    """Measured results (JSON) that the README is built from, one folder per mode."""
    path = repo_root() / "results" / get_mode(mode)
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_text_atomic(path: Path, text: str) -> Path:
    """Write a file whole or not at all: a temporary file beside it, renamed into place (a killed run leaves the old
    file or none, never half of one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


def set_seed(seed: int = SEED) -> int:
    """Seed Python, NumPy and torch so that a run can be repeated; returns the seed."""
    random.seed(seed)
    np.random.seed(seed)
    import torch

    torch.manual_seed(seed)
    return seed


def detect_device() -> str:
    """'cuda' when an NVIDIA GPU is usable, 'mps' on Apple silicon, else 'cpu'."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def detect_precision(device: str | None = None) -> str:
    """'bf16' on CUDA GPUs that support it, 'fp16' on older CUDA GPUs, else 'fp32' (CPU and MPS)."""
    import torch

    device = device or detect_device()
    if device == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def configure_cuda(device: str | None = None) -> None:
    """Process-wide settings for CUDA: cuDNN's fused attention off. It builds an execution plan for every new padded
    length (about 10 ms of CPU per attention call on an H100 with torch 2.11, measured by benchmarks/
    train_throughput.py --profile), and dynamic padding changes the length every batch; with it off, PyTorch uses its
    flash / memory-efficient kernels, which need no plan (bf16 training went from 1,359 to 4,092 pairs/s there)."""
    if (device or detect_device()) != "cuda":
        return
    import torch

    torch.backends.cuda.enable_cudnn_sdp(False)


def loader_workers(device: str | None = None) -> int:
    """DataLoader worker processes for training: on a GPU they tokenize the next batches while the GPU trains on this
    one (up to 4, one core left for the main process); on a CPU 0, since workers would take the model's cores."""
    if (device or detect_device()) != "cuda":
        return 0
    return max(0, min(4, (os.cpu_count() or 1) - 1))


def describe() -> dict[str, str]:
    """Mode, device, precision and library versions, for the top of a notebook or a run record."""
    import platform

    import sentence_transformers
    import torch
    import transformers

    device = detect_device()
    gpu = {"gpu": torch.cuda.get_device_name()} if device == "cuda" else {}
    return {
        "mode": get_mode(),
        "device": device,
        **gpu,
        "precision": detect_precision(device),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "sentence-transformers": sentence_transformers.__version__,
        "cpu_count": str(os.cpu_count()),
    }
