"""Training: the course's training pairs, SentenceTransformerTrainer runs, and their time and peak memory."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
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


def memory_flags(mode: str | None = None) -> dict[str, Any]:
    """Fast mode recomputes activations in the backward pass (gradient checkpointing), so that a training step fits
    Binder's 2 GB beside the rest of a notebook: a Trainer run on 8 triplets x 256 tokens peaked at +658 MB with it
    and +1,084 MB without (2 CPU cores, 2026-11-29). The other modes keep the activations, which is faster."""
    if config.get_mode(mode) != "fast":
        return {}
    return {"gradient_checkpointing": True, "gradient_checkpointing_kwargs": {"use_reentrant": False}}


def loader_flags(device: str | None = None) -> dict[str, Any]:
    """Trainer flags that keep a GPU fed: tokenizing workers that live across epochs, pinned memory, fused AdamW, and
    no wait for the GPU in a step (batches copied to it without blocking, no NaN check of each step's loss)."""
    device = device or config.detect_device()
    workers = config.loader_workers(device)
    flags: dict[str, Any] = {"dataloader_num_workers": workers, "dataloader_pin_memory": device == "cuda"}
    if workers:
        flags |= {"dataloader_persistent_workers": True, "dataloader_prefetch_factor": 4}
    if device == "cuda":  # each wait lets the GPU idle while the CPU readies the next step (train_throughput.py)
        flags |= {"optim": "adamw_torch_fused", "accelerator_config": {"non_blocking": True}}
        flags["logging_nan_inf_filter"] = False
    return flags


GPU_LOGGING_STEPS = 10  # on a GPU, a loss logged every step makes the GPU wait for the CPU every step


def logging_steps(device: str | None = None) -> int:
    """Steps between logged losses: every step on a CPU; every GPU_LOGGING_STEPS on a GPU, where reading the loss
    waits for the GPU to finish the step (benchmarks/train_throughput.py measures what that costs)."""
    return GPU_LOGGING_STEPS if (device or config.detect_device()) == "cuda" else 1


def plumbing_args(seed: int = config.SEED, progress: bool = False) -> dict[str, Any]:
    """The Trainer flags that are plumbing, not recipe: seeds, a log line per step (every GPU_LOGGING_STEPS on a GPU)
    and no external logger, no progress bar, the precision this hardware supports, data-loader flags and fast mode's
    memory flags. Notebook 05 passes them on with **."""
    flags: dict[str, Any] = {"seed": seed, "data_seed": seed, "logging_steps": logging_steps(), "report_to": "none"}
    return flags | {"disable_tqdm": not progress, **precision_flags(), **loader_flags(), **memory_flags()}


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
        "warmup_steps": 0.1,  # a float below 1 is a fraction of the steps (transformers 5)
        "lr_scheduler_type": "linear",
        "batch_sampler": BatchSamplers.NO_DUPLICATES,
        "save_strategy": "no",
        **plumbing_args(),
    }
    values.update(overrides)
    if values.get("dataloader_num_workers"):  # forked workers tokenize; the Rust pool would warn and stop in each
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return SentenceTransformerTrainingArguments(**values)


def _check_one_batch(dataset: Any, args: Any) -> None:
    if len(dataset) < args.per_device_train_batch_size:
        raise TrainError(
            f"{len(dataset)} training rows is less than one batch of {args.per_device_train_batch_size}: "
            "use more rows or a smaller batch_size."
        )


def _train(trainer: Any, **kwargs: Any) -> None:
    """trainer.train(), with running out of memory (GPU, or a CPU allocation) turned into an error with the fixes."""
    import torch

    try:
        trainer.train(**kwargs)
    except (torch.OutOfMemoryError, RuntimeError) as err:
        if not isinstance(err, torch.OutOfMemoryError) and "can't allocate memory" not in str(err):
            raise
        batch = trainer.args.per_device_train_batch_size
        raise TrainError(
            f"Out of memory at batch size {batch}: use a smaller batch_size (e.g. {max(2, batch // 2)}), or the loss "
            "'cached_mnrl' (GradCache: the same in-batch negatives, embedded in mini-batches), or fast mode "
            "(EMBTUNE_MODE=fast); then run the cell again (a run with checkpoints resumes)."
        ) from err


def short_run(model: Any, loss: Any, dataset: Any, args: Any, optimizer: Any = None) -> dict[str, Any]:
    """Train `model` in place with `loss` on `dataset`; returns the logged losses, time and peak memory."""
    from sentence_transformers.sentence_transformer.trainer import SentenceTransformerTrainer

    _check_one_batch(dataset, args)
    config.set_seed(args.seed)
    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=dataset, loss=loss, optimizers=(optimizer, None)
    )
    quiet(trainer)  # the logged losses are returned, not printed step by step
    with track_resources() as usage:
        _train(trainer)
    logged = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return {
        "steps": trainer.state.global_step,
        "losses": logged,
        "seconds": usage.seconds,
        "peak_mb": usage.peak_mb,
        "memory": usage.memory,
    }


def dev_scores(
    model: Any, beir: data.Beir, split: str = "dev", queries: dict[str, str] | None = None
) -> dict[str, float]:
    """Per-query NDCG@10 of `model` on a split's questions (or other wordings of them, `queries`) against that
    split's chunks (dense retrieval)."""
    queries = beir.split_queries(split) if queries is None else queries
    run = evaluate.dense_run(model, data.split_corpus(beir, split), queries)
    per_query = evaluate.per_query_metrics(run, beir.qrels[split], ("ndcg@10",))
    return {qid: m["ndcg@10"] for qid, m in per_query.items()}


# ---------------------------------------------------------------- full training: evaluator, early stopping, resume

PATIENCE = 3  # evaluations without a better dev score before training stops


def _is_main_process() -> bool:
    """Rank 0 under torchrun, or a single process."""
    return int(os.environ.get("RANK", "0")) == 0


def ir_evaluator(
    beir: data.Beir, split: str = "dev", batch_size: int | None = None, corpus: dict[str, Any] | None = None
) -> Any:
    """sentence-transformers' InformationRetrievalEvaluator on a split's questions against that split's chunks
    (or against `corpus`, for data whose chunks carry no article split)."""
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    queries = beir.split_queries(split)
    if not queries:
        raise TrainError(f"The {split!r} split has no questions with relevant chunks: check the qrels of that split.")
    corpus = data.split_corpus(beir, split) if corpus is None else corpus
    return InformationRetrievalEvaluator(
        queries=queries,
        corpus={cid: c["text"] for cid, c in corpus.items()},
        relevant_docs={qid: set(rels) for qid, rels in beir.qrels[split].items()},
        name=split,
        ndcg_at_k=[10],
        mrr_at_k=[10],
        accuracy_at_k=[1, 10],
        precision_recall_at_k=[10],
        map_at_k=[100],
        main_score_function="cosine",
        batch_size=batch_size or config.settings().encode_batch_size,
        show_progress_bar=False,
        # per-question rankings (when the Trainer gives it a folder): CIs for dev scores. Under torchrun only rank 0
        # writes them: every rank evaluates, and two writing one file while one reads it broke a 2-GPU run.
        write_predictions=_is_main_process(),
    )


def metric_key(evaluator: Any) -> str:
    """The Trainer's name for the evaluator's main metric, e.g. 'eval_dev_cosine_ndcg@10' (early stopping reads it)."""
    return f"eval_{evaluator.name}_{evaluator.main_score_function.value}_ndcg@{max(evaluator.ndcg_at_k)}"


def last_checkpoint(output_dir: Path) -> str | None:
    """The newest complete checkpoint-N folder under output_dir, or None (a fresh run)."""
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(output_dir)) if Path(output_dir).is_dir() else None


def fit_args(
    output_dir: Path,
    evaluator: Any,
    eval_steps: int,
    batch_size: int = 32,
    learning_rate: float = 2e-5,
    **overrides: Any,
) -> Any:
    """Arguments for a real run: evaluate and checkpoint every eval_steps, keep the best model by dev NDCG@10."""
    values = {
        "eval_strategy": "steps",
        "eval_steps": eval_steps,
        "save_strategy": "steps",
        "save_steps": eval_steps,
        "save_total_limit": 2,  # the newest and the best
        "load_best_model_at_end": True,
        "metric_for_best_model": metric_key(evaluator),
        "greater_is_better": True,
        **overrides,
    }
    return training_args(output_dir, batch_size=batch_size, learning_rate=learning_rate, **values)


def fit(
    model: Any,
    loss: Any,
    dataset: Any,
    args: Any,
    evaluator: Any,
    patience: int = PATIENCE,
    optimizer: Any = None,
    resume: bool = True,
    callbacks: list[Any] | None = None,
) -> dict[str, Any]:
    """Train with dev evaluation, early stopping and checkpoints; resumes from args.output_dir's last checkpoint."""
    from sentence_transformers.sentence_transformer.trainer import SentenceTransformerTrainer
    from transformers import EarlyStoppingCallback

    _check_one_batch(dataset, args)
    config.set_seed(args.seed)
    trainer = SentenceTransformerTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        loss=loss,
        evaluator=evaluator,
        callbacks=[EarlyStoppingCallback(early_stopping_patience=patience), *(callbacks or [])],
        optimizers=(optimizer, None),
    )
    quiet(trainer)
    timer = step_timer()
    trainer.add_callback(timer)
    dev_log = per_query_log(evaluator)
    trainer.add_callback(dev_log)
    checkpoint = last_checkpoint(Path(args.output_dir)) if resume else None
    with track_resources() as usage:
        _train(trainer, resume_from_checkpoint=checkpoint)
    return summarize(trainer, usage, checkpoint, timer) | {"dev_per_query": dev_log.scores}


def summarize(trainer: Any, usage: Usage, resumed_from: str | None = None, timer: Any = None) -> dict[str, Any]:
    """What a finished Trainer run reports: steps, logged losses, dev scores by step, the best checkpoint, time and
    memory (and the speed of the steps without an evaluation, when a step_timer() was attached)."""
    args, history = trainer.args, trainer.state.log_history
    key = args.metric_for_best_model
    global_batch = args.per_device_train_batch_size * args.world_size
    return {
        "steps": trainer.state.global_step,
        "max_steps": trainer.state.max_steps,
        "resumed_from": resumed_from,
        "losses": [(e["step"], e["loss"]) for e in history if "loss" in e],
        "dev": [(e["step"], e[key]) for e in history if key and key in e],
        "best": trainer.state.best_metric,
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "seconds": usage.seconds,
        "peak_mb": usage.peak_mb,
        "memory": usage.memory,
        "world_size": args.world_size,
        "pairs_per_s": timer.pairs_per_s(global_batch) if timer else None,
    }


def ranking_scores(predictions: Path, qrels: dict[str, dict[str, int]], k: int = 10) -> dict[str, float]:
    """Per-question NDCG@k from an InformationRetrievalEvaluator predictions file (write_predictions=True)."""
    scores = {}
    for line in Path(predictions).read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        ranked = [r["corpus_id"] for r in row["results"]]
        scores[row["query_id"]] = evaluate.ndcg_at_k(ranked, qrels[row["query_id"]], k)
    return scores


def per_query_log(evaluator: Any) -> Any:
    """A callback that keeps, at every evaluation, the evaluator's per-question NDCG@10 ({step: {question: score}}),
    read from the rankings it writes (write_predictions=True): confidence intervals and paired tests for every
    dev score the Trainer logs, at no extra encoding."""
    from transformers import TrainerCallback

    class PerQueryLog(TrainerCallback):
        def __init__(self, file_name: str | None = None, qrels: dict[str, dict[str, int]] | None = None) -> None:
            self.file_name, self.qrels = file_name, qrels  # None: a rank other than 0, which keeps an empty log
            self.scores: dict[int, dict[str, float]] = {}

        def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self.file_name is None:
                return
            path = Path(args.output_dir) / "eval" / self.file_name
            if path.exists():
                self.scores[state.global_step] = ranking_scores(path, self.qrels, max(evaluator.ndcg_at_k))

    if not _is_main_process():  # the other ranks write no rankings (ir_evaluator); rank 0 keeps the log
        return PerQueryLog()
    if not getattr(evaluator, "write_predictions", False):
        raise TrainError("per_query_log needs an evaluator built with write_predictions=True.")
    qrels = {qid: dict.fromkeys(rels, 1) for qid, rels in evaluator.relevant_docs.items()}
    score_name = evaluator.main_score_function.value if evaluator.main_score_function else "cosine"
    return PerQueryLog(evaluator.predictions_file.replace(".jsonl", f"_{score_name}.jsonl"), qrels)


def stop_at(step: int) -> Any:
    """A callback that ends training after `step` steps, leaving the schedule (warmup, decay) that of the full run:
    a comparison run is then exactly the first `step` steps of the run it is compared with."""
    from transformers import TrainerCallback

    class StopAt(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            if state.global_step >= step:
                control.should_training_stop = True
            return control

    return StopAt()


def _stretch_ends(state: Any, control: Any) -> bool:
    """Whether an evaluation, a save or the end of training follows this step (the Trainer's flags at step end)."""
    last = state.global_step >= state.max_steps or control.should_training_stop
    return bool(last or control.should_evaluate or control.should_save)


def step_timer() -> Any:
    """A callback that times training steps, leaving out those followed by an evaluation or a checkpoint save."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.last: float | None = None
            self.busy = False  # the interval since `last` holds an evaluation or a save
            self.steps, self.seconds = 0, 0.0

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            import torch

            # Wait for the GPU only where a timed stretch starts or ends (after or before an evaluation, a save or
            # the last step): the stretch's sum is exact, and the steps inside it run without a wait
            if torch.cuda.is_available() and (self.last is None or self.busy or _stretch_ends(state, control)):
                torch.cuda.synchronize()
            now = time.perf_counter()
            if self.last is not None and not self.busy:
                self.steps, self.seconds = self.steps + 1, self.seconds + now - self.last
            self.last, self.busy = now, False

        def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.busy = True

        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.busy = True

        def pairs_per_s(self, global_batch: int) -> float | None:
            """Pairs per second over the timed steps (data loading included, evaluation and saving left out)."""
            return global_batch * self.steps / self.seconds if self.seconds else None

    return StepTimer()


def quiet(trainer: Any) -> None:
    """No metrics dict printed at every logged step: drop the printer, and keep a bar (if any) without its prints."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    class QuietProgress(ProgressCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            return None

    trainer.remove_callback(PrinterCallback)
    if not trainer.args.disable_tqdm:
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(QuietProgress())


# ---------------------------------------------------------------- partial fine-tuning

PARTIAL = ("full", "frozen lower layers", "layer-wise LR decay", "LoRA")
LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.1, "target_modules": ["query", "key", "value", "dense"]}


def encoder_layers(model: Any) -> list[Any]:
    """The transformer blocks of a BERT-style SentenceTransformer, bottom first."""
    backbone = getattr(model[0], "auto_model", None) or model[0].model
    return list(backbone.encoder.layer)


def trainable_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def freeze_lower_layers(model: Any, n_layers: int) -> None:
    """Freeze the word embeddings and the lowest n_layers blocks; the rest train."""
    layers = encoder_layers(model)
    if not 0 <= n_layers <= len(layers):
        raise TrainError(f"n_layers={n_layers}: this model has {len(layers)} blocks; choose 0..{len(layers)}.")
    backbone = getattr(model[0], "auto_model", None) or model[0].model
    for module in [backbone.embeddings, *layers[:n_layers]]:
        for p in module.parameters():
            p.requires_grad = False


def llrd_optimizer(model: Any, learning_rate: float, decay: float = 0.8, weight_decay: float = 0.01) -> Any:
    """AdamW with layer-wise learning-rate decay: the top block gets learning_rate, each block below decay × more."""
    import torch

    layers = encoder_layers(model)
    depth = {id(p): i + 1 for i, layer in enumerate(layers) for p in layer.parameters()}  # embeddings: depth 0
    top = len(layers)
    groups: dict[int, list[Any]] = {}
    for p in model.parameters():
        if p.requires_grad:
            groups.setdefault(depth.get(id(p), 0), []).append(p)  # outside the blocks: the embeddings
    return torch.optim.AdamW(
        [{"params": ps, "lr": learning_rate * decay ** (top - d)} for d, ps in sorted(groups.items())],
        lr=learning_rate,
        weight_decay=weight_decay,
    )


def add_lora(model: Any, **overrides: Any) -> None:
    """Wrap the transformer in a LoRA adapter (peft): only the low-rank matrices train."""
    try:
        from peft import LoraConfig, TaskType
    except ImportError as err:
        raise TrainError("LoRA needs the peft package: `pip install peft` (a course requirement).") from err
    model.add_adapter(LoraConfig(task_type=TaskType.FEATURE_EXTRACTION, **(LORA | overrides)))


# ---------------------------------------------------------------- the trained model on disk


def save_model(model: Any, path: Path, record: dict[str, Any]) -> Path:
    """Save atomically (write beside, then rename): the model, its model card, plus the course's training record."""
    import shutil

    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save(str(tmp))  # sentence-transformers writes its own model card (README.md) with the training details
    rows = "\n".join(f"| {k} | {v} |" for k, v in record.items())
    card = tmp / "README.md"
    text = card.read_text() if card.exists() else f"# {path.name}\n"
    card.write_text(f"{text.rstrip()}\n\n## embtune training record\n\n| what | value |\n| --- | --- |\n{rows}\n")
    (tmp / "embtune_training.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)
    return path


# ---------------------------------------------------------------- the course's training run (notebook 05, the script)

FINAL = {"source": "both", "loss": "matryoshka", "hard_negatives": 0, "learning_rate": 5e-5}


def probe_loss(model: Any, dataset: Any, batch_size: int = 16, n_rows: int = 64) -> float:
    """Mean MNRL loss (eval mode, no gradients) over the first n_rows of a dataset: a fixed yardstick for training."""
    import torch

    from embtune_utils import losses

    loss = losses.make_loss("mnrl", model)
    n_rows = min(n_rows, len(dataset))
    was_training = model.training
    model.eval()
    values = []
    with torch.no_grad():
        for start in range(0, n_rows, batch_size):
            batch = dataset.select(range(start, min(start + batch_size, n_rows)))
            values.append(float(loss(losses.features(model, [batch[c] for c in batch.column_names]), None)))
    model.train(was_training)
    return sum(values) / len(values)


def sample_rows(rows: list[dict[str, Any]], n: int | None, seed: int = config.SEED) -> list[dict[str, Any]]:
    """A seeded random subset of n rows (all of them, shuffled, when n is None or larger)."""
    import random

    rows = list(rows)
    random.Random(seed).shuffle(rows)
    return rows if n is None else rows[:n]


def course_rows(beir: data.Beir, model: Any, source: str = "both", hard_negatives: int = 0) -> list[dict[str, Any]]:
    """Training rows of a source: plain pairs, or notebook 03's recipe rows when hard negatives are asked for."""
    if hard_negatives:
        return course_negatives(beir, model, source)
    return training_pairs(beir, model, source)


RUN_KEYS = ("per_device_train_batch_size", "learning_rate", "num_train_epochs", "max_steps", "warmup_steps")
RUN_KEYS += ("eval_steps", "seed", "bf16", "fp16")  # what makes a checkpoint belong to this run


def restart_if_changed(output_dir: Path, run_config: dict[str, Any]) -> bool:
    """Delete output_dir's checkpoints when they were made with another configuration; True if it did.

    Resuming is only correct for the same run: a changed batch size, data or learning rate must start over.
    """
    import shutil

    stamp = output_dir / "run_config.json"
    text = json.dumps(run_config, sort_keys=True, default=str)
    changed = stamp.exists() and stamp.read_text() != text
    if changed or (output_dir.exists() and not stamp.exists()):
        shutil.rmtree(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    stamp.write_text(text)
    return changed


def resume_point(args: Any, rows: list[dict[str, Any]], loss_name: str, base_model: str = config.BASE_MODEL) -> Any:
    """The checkpoint to resume from (None: a fresh run): args.output_dir's newest one if it was made by this same
    run (rows, loss, base model and the RUN_KEYS arguments), after deleting the folder's checkpoints otherwise."""
    import hashlib

    rows_key = hashlib.sha256(json.dumps([(r["query"], r["chunk_id"], r.get("negatives")) for r in rows]).encode())
    run_config = {"rows": rows_key.hexdigest()[:16], "loss": loss_name, "base_model": base_model}
    run_config |= {k: getattr(args, k) for k in RUN_KEYS}
    if _is_main_process():  # under torchrun, one process manages the folder
        restart_if_changed(Path(args.output_dir), run_config)
        checkpoint = last_checkpoint(Path(args.output_dir))
        if checkpoint and _finished(Path(checkpoint)):  # resuming is for interrupted runs: a finished one starts over
            import shutil

            shutil.rmtree(args.output_dir)
            restart_if_changed(Path(args.output_dir), run_config)
    return last_checkpoint(Path(args.output_dir))


def _finished(checkpoint: Path) -> bool:
    """Whether a checkpoint is the end of its run: the last step, or early stopping had stopped it."""
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    control = state.get("stateful_callbacks", {}).get("TrainerControl", {}).get("args", {})
    return state.get("global_step", 0) >= state.get("max_steps", 1) or bool(control.get("should_training_stop"))


def format_diff(diff: dict[str, float]) -> str:
    """A paired difference as '+0.012 [-0.010, +0.034]' (mean and 95% CI)."""
    return f"{diff['mean']:+.3f} [{diff['lo']:+.3f}, {diff['hi']:+.3f}]"


def paired_verdict(diff: dict[str, float]) -> str:
    """The words for a paired difference (paired_test's mean, lo, hi): ahead or behind only when the CI excludes 0."""
    words = {1: "ahead beyond the noise", -1: "behind beyond the noise"}
    return words.get(evaluate.ci_side(diff["lo"], diff["hi"]), "no difference this dev set can see (the CI spans 0)")


def dev_scores_by_dim(
    model: Any, beir: data.Beir, dims: tuple[int, ...], split: str = "dev", cache: bool = True
) -> dict[int, dict[str, float]]:
    """Per-question NDCG@10 on a split with the embeddings cut to each of `dims` (first d dimensions, re-normalised),
    from one encoding of the split's chunks and questions: {dim: {question: score}}."""
    from embtune_utils.deploy import truncate

    corpus, queries = data.split_corpus(beir, split), beir.split_queries(split)
    doc_ids, query_ids = list(corpus), list(queries)
    docs = evaluate.corpus_embeddings(model, corpus, cache=cache)
    qs = evaluate.encode(model, [queries[q] for q in query_ids])
    out = {}
    for dim in dims:
        index = evaluate.flat_index(truncate(docs, dim))
        run = evaluate.search_index(index, doc_ids, query_ids, truncate(qs, dim))
        per_query = evaluate.per_query_metrics(run, beir.qrels[split], ("ndcg@10",))
        out[dim] = {qid: m["ndcg@10"] for qid, m in per_query.items()}
    return out


def train_model(
    beir: data.Beir,
    output_dir: Path,
    source: str = FINAL["source"],
    loss_name: str = FINAL["loss"],
    hard_negatives: int = FINAL["hard_negatives"],
    learning_rate: float = FINAL["learning_rate"],
    epochs: int | None = None,
    batch_size: int | None = None,
    base_model: str = config.BASE_MODEL,
    resume: bool = True,
    callbacks: list[Any] | None = None,
    rows: list[dict[str, Any]] | None = None,
    corpus: dict[str, dict[str, Any]] | None = None,
    dev_corpus: dict[str, dict[str, Any]] | None = None,
    seed: int = config.SEED,
    progress: bool = False,
    gather: bool | None = None,
    max_pairs: int | None | str = "mode",
    eval_steps: int | None = None,
) -> tuple[Any, dict[str, Any]]:
    """The course's training run: base model, fit on the source's pairs with dev early stopping; (model, result).

    `rows`, `corpus` and `dev_corpus` replace the course's training rows and its per-split chunks (as `embtune run`
    does for your own corpus: rows over `corpus`, dev questions searched against `dev_corpus`, else all of `corpus`).
    `max_pairs` caps the rows ("mode": the mode's max_train_pairs; None: all); `eval_steps` defaults to the mode's.
    """
    from embtune_utils import losses, models

    settings = config.settings()
    model = models.load_model(base_model, verbose=False)
    if rows is None:
        rows = course_rows(beir, model, source, hard_negatives)
    rows = sample_rows(rows, settings.max_train_pairs if max_pairs == "mode" else max_pairs, seed)
    dataset = negatives.to_dataset(rows, corpus or data.split_corpus(beir, "train"), n=hard_negatives)
    evaluator = ir_evaluator(beir, "dev", corpus=dev_corpus or corpus)
    args = fit_args(
        output_dir,
        evaluator,
        eval_steps=eval_steps or settings.eval_steps,
        batch_size=batch_size or settings.train_batch_size,
        learning_rate=learning_rate,
        num_train_epochs=epochs or settings.epochs,
        seed=seed,
        data_seed=seed,
        disable_tqdm=not progress,
    )
    resume_point(args, rows, loss_name, base_model)  # drops checkpoints of another configuration
    gather = args.world_size > 1 if gather is None else gather  # several GPUs: all batches serve as negatives
    loss = losses.make_loss(loss_name, model, gather=gather)
    before = probe_loss(model, dataset)
    result = fit(model, loss, dataset, args, evaluator, resume=resume, callbacks=callbacks)
    result["probe_loss"] = (before, probe_loss(model, dataset))
    result |= {"pairs": len(dataset), "source": source, "loss": loss_name, "hard_negatives": hard_negatives}
    result |= {"learning_rate": learning_rate, "batch_size": args.per_device_train_batch_size}
    result |= {"epochs": args.num_train_epochs, "base_model": base_model, "gather_across_devices": gather}
    return model, result


def model_record(result: dict[str, Any]) -> dict[str, Any]:
    """What the model card records about a run: data, loss, dev metric, hardware, date."""
    from datetime import date

    info = config.describe()
    keep = ("base_model", "source", "pairs", "loss", "hard_negatives", "learning_rate", "batch_size", "epochs", "steps")
    record = {k: result[k] for k in keep if k in result}
    record |= {"best dev NDCG@10": round(result["best"], 4), "train seconds": round(result["seconds"], 1)}
    record |= {"hardware": f"{info['device']} ({info['cpu_count']} CPU cores), {info['precision']}"}
    record |= {"mode": info["mode"], "sentence-transformers": info["sentence-transformers"], "date": date.today()}
    data_used = {"experts": "the experts' training questions", "synthetic": "synthetic queries (SmolLM2-135M-Instruct)"}
    data_used["both"] = f"{data_used['experts']} + {data_used['synthetic']}"
    record["data"] = f"COVID-QA training articles (CC BY): {data_used.get(result.get('source'), result.get('source'))}"
    return record


def finetuned_path(mode: str | None = None) -> Path:
    """Where the course's fine-tuned model is saved (notebooks 06-07 load it from here)."""
    return config.artifacts_dir(mode) / "models" / "finetuned"


def course_model(beir: data.Beir) -> Any:
    """Notebook 05's saved fine-tuned model; trained now with the same recipe (and saved) if this mode has none."""
    from embtune_utils import models

    path = finetuned_path()
    if not (path / "modules.json").exists():
        where = config.display_path(path)
        print(f"No fine-tuned model at {where} yet: training one with notebook 05's recipe {FINAL}.")
        model, result = train_model(beir, config.artifacts_dir() / "checkpoints" / "finetuned")
        save_model(model, path, model_record(result))
    return models.load_model(str(path), verbose=False)


def main(argv: list[str] | None = None) -> int:
    """`python -m embtune_utils.train` (also under torchrun / accelerate launch): train and save the course model."""
    import argparse

    from embtune_utils import models

    parser = argparse.ArgumentParser(prog="python -m embtune_utils.train", description=main.__doc__)
    parser.add_argument("--mode", default=None, help="fast | default | full (else $EMBTUNE_MODE)")
    parser.add_argument("--base-model", default=config.BASE_MODEL, help="Hub name or local folder of the model to tune")
    parser.add_argument("--source", default=FINAL["source"], choices=SOURCES)
    parser.add_argument("--loss", default=FINAL["loss"], help="mnrl | cached_mnrl | matryoshka | ...")
    parser.add_argument("--hard-negatives", type=int, default=FINAL["hard_negatives"])
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None, help="per device")
    parser.add_argument("--lr", type=float, default=FINAL["learning_rate"])
    parser.add_argument("--out", default=None, help="checkpoints folder (default: artifacts/<mode>/checkpoints)")
    parser.add_argument("--no-resume", action="store_true", help="start over instead of resuming a checkpoint")
    parser.add_argument("--no-gather", action="store_true", help="on several GPUs, negatives from the own batch only")
    parser.add_argument("--score-test", action="store_true", help="also print the test NDCG@10 over the whole corpus")
    args = parser.parse_args(argv)
    if args.mode:
        os.environ["EMBTUNE_MODE"] = config.get_mode(args.mode)
    config.set_seed()
    beir = data.course_data(models.load_model(args.base_model, verbose=False).tokenizer)
    out = Path(args.out) if args.out else config.artifacts_dir() / "checkpoints" / "finetuned"
    model, result = train_model(
        beir,
        out,
        source=args.source,
        loss_name=args.loss,
        hard_negatives=args.hard_negatives,
        learning_rate=args.lr,
        epochs=args.epochs,
        batch_size=args.batch_size,
        base_model=args.base_model,
        resume=not args.no_resume,
        gather=False if args.no_gather else None,
    )
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, one process writes
        path = save_model(model, finetuned_path(), model_record(result))
        summary = {k: v for k, v in result.items() if k not in ("losses", "dev", "dev_per_query")}
        if args.score_test:  # sentence-transformers' own evaluator: no FAISS needed on a bare GPU machine
            scores = ir_evaluator(beir, "test", corpus=beir.corpus)(model)
            summary["test ndcg@10"] = scores["test_cosine_ndcg@10"]
        if summary.get("best_checkpoint"):
            summary["best_checkpoint"] = config.display_path(summary["best_checkpoint"])
        print(json.dumps(summary | {"saved": config.display_path(path)}, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
