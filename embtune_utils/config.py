"""One place for modes, paths, seeds, device and precision: every notebook and module reads these."""

from __future__ import annotations

import contextlib
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
    beyond_pairs: int  # training rows per technique run in notebook 08 (distillation, curriculum, ...)
    max_train_pairs: int | None  # cap on the final training run's pairs (None = all)
    epochs: int  # passes over the training pairs in the final run (early stopping may end it sooner)
    eval_steps: int  # dev evaluation (and checkpoint) every this many steps
    max_generate_chunks: int | None  # `embtune run`: chunks that get synthetic queries (None = all)
    rerank_questions: int | None  # training questions of notebook 06b's reranker (None = all)
    rerank_negatives: int  # mined hard negatives per training question
    rerank_max_length: int  # word pieces of (question, chunk) the cross-encoder reads; chunks are up to 200
    rerank_batch_size: int  # training questions per batch
    rerank_learning_rate: float  # the new 1-logit head starts from random weights: a short run needs a high rate
    rerank_epochs: int  # passes over the training questions
    rerank_loss: str  # `embtune run --rerank`'s loss: the one that won on dev in notebook 06b's run of this mode
    rerank_depths: tuple[int, ...]  # the k (top-k of the first stage) swept on dev


_SETTINGS = {
    # fast: a slice small enough for CI and live demos; claims are still asserted on real data.
    "fast": ModeSettings(
        "fast",
        max_articles=24,
        max_test_queries=150,
        encode_batch_size=32,
        live_chunks=2,
        train_batch_size=8,  # Binder's 2 GB: a training step at 16 pairs x 256 tokens peaks near 2 GB with the rest
        ablation_pairs=32,
        memory_batch=12,
        compare_pairs=32,
        beyond_pairs=24,
        max_train_pairs=96,
        epochs=1,
        eval_steps=4,
        max_generate_chunks=24,
        rerank_questions=32,
        rerank_negatives=3,
        rerank_max_length=128,
        rerank_batch_size=4,
        rerank_learning_rate=2e-4,
        rerank_epochs=1,
        rerank_loss="in-batch negatives",
        rerank_depths=(3, 5),
    ),
    # default: the real CPU course, all articles and all test questions.
    "default": ModeSettings(
        "default",
        max_articles=None,
        max_test_queries=None,
        encode_batch_size=32,
        live_chunks=4,
        train_batch_size=32,
        ablation_pairs=128,
        memory_batch=32,
        compare_pairs=128,
        beyond_pairs=48,
        max_train_pairs=512,
        epochs=1,
        eval_steps=4,
        max_generate_chunks=None,
        rerank_questions=320,  # 2 CPU cores: ~2.5 min of training with the listwise loss (measured 2026-11-29)
        rerank_negatives=3,
        rerank_max_length=128,
        rerank_batch_size=4,  # more optimizer steps for the new head within the same budget
        rerank_learning_rate=2e-4,  # dev NDCG@10 at 240 questions: 0.398 at 4e-5 batch 16, 0.440 at 1e-4 batch 4
        rerank_epochs=1,
        rerank_loss="in-batch negatives",  # dev NDCG@10 0.450 vs 0.329 for binary cross-entropy (2026-11-29)
        rerank_depths=(5, 10),
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
        compare_pairs=1280,
        beyond_pairs=1280,
        max_train_pairs=None,
        epochs=3,
        eval_steps=10,
        max_generate_chunks=None,
        rerank_questions=None,
        rerank_negatives=7,
        rerank_max_length=256,
        rerank_batch_size=16,
        rerank_learning_rate=4e-5,
        rerank_epochs=3,
        rerank_loss="binary cross-entropy",  # dev NDCG@10 0.587 vs 0.556 for in-batch negatives (H200, 2026-11-29)
        rerank_depths=(10, 20, 30, 50),
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


def display_path(path: str | Path) -> str:
    """A path as notebooks and logs print it, with no machine-specific prefix: relative to the course folder, else
    `<packages>/...` inside an installed package, `~/...` under home, `<tmp>/...` under the temporary folder."""
    import sysconfig
    import tempfile

    path = Path(path).expanduser().resolve()
    site = {Path(sysconfig.get_paths()[k]).resolve() for k in ("purelib", "platlib")}
    for prefix in site:  # first: the course's own .venv lies inside the course folder
        if path.is_relative_to(prefix):
            return f"<packages>/{path.relative_to(prefix)}"
    with contextlib.suppress(ConfigError):
        if path.is_relative_to(root := repo_root()):
            return str(path.relative_to(root)) or "."
    if path.is_relative_to(tmp := Path(tempfile.gettempdir()).resolve()):
        return f"<tmp>/{path.relative_to(tmp)}"
    if path.is_relative_to(home := Path.home().resolve()):
        return f"~/{path.relative_to(home)}"
    return str(path)


def peak_rss_mb() -> float | None:
    """This process's peak resident memory so far, in MB (None where the OS does not say). On Linux it reads VmHWM,
    the peak of the process's own address space: ru_maxrss would also count the parent's memory before exec."""
    import re
    import sys

    with contextlib.suppress(OSError, TypeError):
        return int(re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text())[1]) / 1024
    try:
        import resource
    except ImportError:  # Windows
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 1024)


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


PRECISIONS = ("fp32", "fp16", "bf16")


def precision_override() -> str | None:
    """$EMBTUNE_PRECISION (fp32, fp16 or bf16) when set, e.g. fp16 on a bf16 GPU to try a T4's path; else None."""
    value = os.environ.get("EMBTUNE_PRECISION", "").strip().lower()
    if not value:
        return None
    if value not in PRECISIONS:
        raise ConfigError(
            f"EMBTUNE_PRECISION={value!r} is not a precision: use one of {', '.join(PRECISIONS)} "
            "(for example `EMBTUNE_PRECISION=fp16` to train as on a T4), or unset it to let the course pick."
        )
    return value


def detect_precision(device: str | None = None) -> str:
    """$EMBTUNE_PRECISION if set; else 'bf16' on CUDA GPUs with native bf16 (Ampere and later), 'fp16' on older CUDA
    GPUs (a T4: its bf16 is only emulated, which torch.cuda.is_bf16_supported() counts by default), else 'fp32'."""
    import torch

    if (forced := precision_override()) is not None:
        return forced
    device = device or detect_device()
    if device == "cuda":
        try:
            native = torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # torch < 2.3 has no emulation and no argument
            native = torch.cuda.is_bf16_supported()
        return "bf16" if native else "fp16"
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
    cap_gpu_memory()


GB = 10**9  # EMBTUNE_GPU_MEMORY_GB counts decimal gigabytes, as GPU datasheets do (a T4: 16 GB, 15.8e9 bytes to torch)
_gpu_memory_cap: dict[str, float] = {}  # what cap_gpu_memory() set in this process (empty: no cap)


def gpu_memory_gb() -> float | None:
    """$EMBTUNE_GPU_MEMORY_GB as a number of GB when set (a positive number), else None."""
    value = os.environ.get("EMBTUNE_GPU_MEMORY_GB", "").strip()
    if not value:
        return None
    try:
        gb = float(value)
    except ValueError:
        gb = float("nan")
    if not 0 < gb < float("inf"):
        raise ConfigError(
            f"EMBTUNE_GPU_MEMORY_GB={value!r} is not a positive number of GB: for example "
            "`EMBTUNE_GPU_MEMORY_GB=15` to fit a 16 GB T4, or unset it to use the whole GPU."
        )
    return gb


def memory_fraction(gb: float, total_bytes: int) -> float:
    """The share of a GPU of `total_bytes` that `gb` GB is, at most 1 (a cap above the card's memory caps nothing)."""
    return min(1.0, gb * GB / total_bytes)


def cap_gpu_memory() -> dict[str, float]:
    """Cap this process's GPU memory at $EMBTUNE_GPU_MEMORY_GB (torch.cuda.set_per_process_memory_fraction on every
    visible GPU, once per process), so that a large GPU behaves like a small one: an allocation past the cap raises
    torch's out-of-memory error, as on the small card. Returns {"gb", "fraction", "total_gb"}, empty when unset."""
    gb = gpu_memory_gb()
    if gb is None or _gpu_memory_cap:
        return dict(_gpu_memory_cap)
    import torch

    for index in range(torch.cuda.device_count()):
        total = torch.cuda.get_device_properties(index).total_memory
        fraction = memory_fraction(gb, total)
        torch.cuda.set_per_process_memory_fraction(fraction, index)
        _gpu_memory_cap.update(gb=gb, fraction=round(fraction, 4), total_gb=round(total / GB, 1))
    return dict(_gpu_memory_cap)


MAX_LOADER_WORKERS = 8  # 4 could not tokenize batches of 512 pairs as fast as an H200 trains on them (0.71x the
# bare loop, the main process waiting 26-48 ms a step for them); 8 kept up (0.95x): benchmarks/train_throughput.py


def loader_workers(device: str | None = None) -> int:
    """DataLoader worker processes for training: on a GPU they tokenize the next batches while the GPU trains on this
    one (up to MAX_LOADER_WORKERS, one core left for the main process); on a CPU 0, since workers would take the
    model's cores."""
    if (device or detect_device()) != "cuda":
        return 0
    return max(0, min(MAX_LOADER_WORKERS, (os.cpu_count() or 1) - 1))


def describe() -> dict[str, str]:
    """Mode, device, precision and library versions, for the top of a notebook or a run record."""
    import platform

    import sentence_transformers
    import torch
    import transformers

    device = detect_device()
    gpu = {"gpu": torch.cuda.get_device_name()} if device == "cuda" else {}
    if device == "cuda" and (gb := gpu_memory_gb()) is not None:
        gpu["gpu_memory_cap"] = f"{gb:g} GB (EMBTUNE_GPU_MEMORY_GB)"
    forced = {"precision_set_by": "EMBTUNE_PRECISION"} if precision_override() else {}
    return {
        "mode": get_mode(),
        "device": device,
        **gpu,
        "precision": detect_precision(device),
        **forced,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "sentence-transformers": sentence_transformers.__version__,
        "cpu_count": str(os.cpu_count()),
    }
