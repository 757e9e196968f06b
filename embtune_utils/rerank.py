"""A fine-tuned cross-encoder reranker (notebook 06b, `embtune run --rerank`): its training rows, loss and
arguments, scoring a first stage's top-k candidates once, reordering them for every k, and its latency."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from embtune_utils import config, data, evaluate, models, negatives, train

LOSSES = ("in-batch negatives", "binary cross-entropy")  # CrossEncoder MultipleNegativesRankingLoss, BinaryCrossEntropy
FIRST_STAGES = ("bm25", "hybrid weighted")  # what the reranker reorders: BM25 and notebook 06's dev-tuned hybrid
IN_BATCH_NEGATIVES = 3  # other questions' positives each question is also scored against (in-batch negatives loss)
MINING = {"range_max": 50, "relative_margin": 0.05, "sampling_strategy": "random"}  # rest: mining_args()


class RerankError(ValueError):
    """A reranking input the course cannot use; the message names the fix."""


def reranker_path(mode: str | None = None) -> Path:
    """Where notebook 06b saves the trained reranker (notebook 07 times it, `embtune run` has its own)."""
    return config.artifacts_dir(mode) / "reranker"


def load_reranker(name: str = config.BASE_MODEL, max_length: int | None = None, verbose: bool = True) -> Any:
    """A CrossEncoder with one output logit, from a Hub name or folder (offline: the bundled MiniLM's weights).

    From a bi-encoder's weights, the transformer is pretrained and the 1-logit head on [CLS] is new: random weights.
    """
    import logging

    from sentence_transformers.cross_encoder import CrossEncoder

    path, source = models.resolve_model(name)
    if not is_cross_encoder(Path(path)):  # a trained reranker keeps the max_length it was saved with
        max_length = max_length or config.settings().rerank_max_length
    config_kwargs = {"attention_probs_dropout_prob": models.ATTENTION_DROPOUT}
    # "Some weights ... newly initialized" (said in the notebook instead), a tensor-parallel note about every layer,
    # and sentence-transformers 6's "Converting SentenceTransformer model <absolute path> to CrossEncoder"
    names = ("modeling_utils", "integrations.tensor_parallel")
    names = tuple(f"transformers.{n}" for n in names) + ("sentence_transformers.base.model",)
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        model = CrossEncoder(path, num_labels=1, max_length=max_length, config_kwargs=config_kwargs)
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
    if verbose:
        where = f" ({config.display_path(path)})" if source != "hub" else ""
        device, tokens = model.device, model.max_seq_length
        shown = config.display_path(name) if source == "local" else name  # no absolute paths in outputs
        print(f"Loaded {shown} as a cross-encoder from {source}{where} on {device}, max {tokens} tokens")
    return model


def is_cross_encoder(folder: Path) -> bool:
    """Whether a model folder holds a saved CrossEncoder (sentence-transformers writes its type beside it)."""
    import json

    meta = folder / "config_sentence_transformers.json"
    return meta.is_file() and json.loads(meta.read_text()).get("model_type") == "CrossEncoder"


def recipe() -> dict[str, Any]:
    """What changes a trained reranker: the mode's budget and the recipe's constants (`embtune run`'s stage key)."""
    s = config.settings()
    budget = {k: getattr(s, f"rerank_{k}") for k in ("questions", "negatives", "max_length", "batch_size", "epochs")}
    budget["learning_rate"] = s.rerank_learning_rate
    return budget | {"loss": s.rerank_loss, "in_batch": IN_BATCH_NEGATIVES, **MINING}


def mining_args(num_negatives: int | None = None) -> dict[str, Any]:
    """mine_hard_negatives' recipe arguments for the reranker's rows: negatives from the top 50 of the base model, a
    margin below the positive (false-negative guard), sampled at random among them."""
    n = num_negatives or config.settings().rerank_negatives
    return {"num_negatives": n, "range_min": 0, **MINING, "use_faiss": True}


def questions_dataset(pairs: list[dict[str, Any]], corpus: dict[str, dict[str, Any]]) -> Any:
    """A datasets.Dataset (query, positive) from (query, chunk_id) pairs."""
    from datasets import Dataset

    return Dataset.from_dict(
        {"query": [p["query"] for p in pairs], "positive": [corpus[p["chunk_id"]]["text"] for p in pairs]}
    )


def training_questions(beir: data.Beir, model: Any, n: int | None = None, seed: int = config.SEED) -> Any:
    """The training articles' questions (experts' and the shipped synthetic ones) as (query, positive), at most `n`
    (the mode's rerank_questions), sampled with a fixed seed."""
    pairs = train.training_pairs(beir, model, "both")
    return questions_dataset(train.sample_rows(pairs, config.settings().rerank_questions if n is None else n, seed),
                             beir.corpus)  # fmt: skip


def make_loss(name: str, model: Any, num_negatives: int | None = None) -> Any:
    """The sentence-transformers cross-encoder loss behind one of LOSSES."""
    from sentence_transformers.cross_encoder import losses

    if name == "in-batch negatives":
        return losses.MultipleNegativesRankingLoss(model, num_negatives=IN_BATCH_NEGATIVES)
    if name == "binary cross-entropy":
        import torch

        n = num_negatives or config.settings().rerank_negatives  # one positive per n negatives: weigh it n times
        return losses.BinaryCrossEntropyLoss(model, pos_weight=torch.tensor(float(n)))
    raise RerankError(f"Unknown reranker loss {name!r}: choose one of {', '.join(LOSSES)}.")


def output_format(loss_name: str) -> str:
    """The mine_hard_negatives output_format a loss reads: n-tuples (listwise) or labelled pairs (pointwise)."""
    return "labeled-pair" if loss_name == "binary cross-entropy" else "n-tuple"


def plumbing_args(seed: int = config.SEED) -> dict[str, Any]:
    """The CrossEncoderTrainer flags that are plumbing, not recipe (notebook 05's, minus the bi-encoder's sampler)."""
    return train.plumbing_args(seed) | {"save_strategy": "no"}


def training_args(output_dir: Path, **overrides: Any) -> Any:
    """CrossEncoderTrainingArguments of the recipe: the mode's batch size, learning rate and epochs, 10% warmup."""
    from sentence_transformers.cross_encoder import CrossEncoderTrainingArguments

    values = {
        "output_dir": str(output_dir),
        "per_device_train_batch_size": config.settings().rerank_batch_size,
        "learning_rate": config.settings().rerank_learning_rate,
        "num_train_epochs": config.settings().rerank_epochs,
        "warmup_steps": 0.1,  # a float below 1 is a fraction of the steps (transformers 5)
        **plumbing_args(),
    }
    return CrossEncoderTrainingArguments(**(values | overrides))


def mine(dataset: Any, model: Any, corpus: dict[str, dict[str, Any]], loss_name: str) -> Any:
    """The hard-negative rows one loss trains on, mined with mining_args() among `corpus`'s chunks."""
    from sentence_transformers.util import mine_hard_negatives

    texts = [doc["text"] for doc in corpus.values()]
    with negatives.silenced():
        return mine_hard_negatives(
            dataset,
            model,
            corpus=texts,
            **mining_args(),
            output_format=output_format(loss_name),
            **negatives.mining_plumbing(model),
        )


def train_reranker(
    questions: Any,
    base: Any,
    corpus: dict[str, dict[str, Any]],
    output_dir: Path,
    loss_name: str | None = None,
    seed: int = config.SEED,
) -> tuple[Any, dict[str, Any]]:
    """Train a reranker from config.BASE_MODEL's weights on `questions` (query, positive) with hard negatives mined
    by `base` among `corpus`, with one of LOSSES (default: the mode's rerank_loss, the one that won on dev in
    notebook 06b's run of that mode): notebook 06b's cells, for `embtune run --rerank`. Returns the model and
    {seconds, rows, loss}."""
    from sentence_transformers.cross_encoder import CrossEncoderTrainer

    loss_name = loss_name or config.settings().rerank_loss
    config.set_seed(seed)  # mine_hard_negatives samples with the global random generator
    rows = mine(questions, base, corpus, loss_name)
    config.set_seed(seed)
    model = load_reranker(verbose=False)
    args = training_args(output_dir, **plumbing_args(seed))
    trainer = CrossEncoderTrainer(model=model, args=args, train_dataset=rows, loss=make_loss(loss_name, model))
    train.quiet(trainer)
    started = time.perf_counter()
    trainer.train()
    return model, {"seconds": time.perf_counter() - started, "rows": len(rows), "loss": loss_name}


def course_reranker(beir: data.Beir, base: Any) -> Any:
    """Notebook 06b's saved reranker, or (if 06b has not run in this mode) one trained now with the mode's loss."""
    path = reranker_path()
    if not (path / "config.json").is_file():
        loss = config.settings().rerank_loss
        print(f"No reranker at {config.display_path(path)}: training one with the {loss} loss (notebook 06b's)")
        model, _ = train_reranker(training_questions(beir, base), base, data.split_corpus(beir, "train"),
                                  config.artifacts_dir() / "reranker-runs" / "fallback")  # fmt: skip
        model.save(str(path))
    return load_reranker(str(path))


def predict_logits(model: Any, texts: list[tuple[str, str]], batch_size: int) -> np.ndarray:
    """The cross-encoder's raw scores of (question, chunk) pairs: a sigmoid (predict's default for one logit) would
    tie confident scores at 1.0."""
    import torch

    return model.predict(texts, batch_size=batch_size, show_progress_bar=False, activation_fn=torch.nn.Identity())


def candidate_scores(
    model: Any, runs: list[evaluate.Run], queries: dict[str, str], corpus: dict[str, dict[str, Any]], depth: int
) -> dict[str, dict[str, float]]:
    """The reranker's score of every chunk in the top `depth` of any of `runs`, per question: each (question, chunk)
    pair is scored once, so every k up to `depth` and every first stage is reordered from the same scores."""
    pairs = [(qid, doc) for qid in queries for doc in dict.fromkeys(d for run in runs for d, _ in run[qid][:depth])]
    texts = [(queries[qid], corpus[doc]["text"]) for qid, doc in pairs]
    scores = predict_logits(model, texts, config.settings().encode_batch_size)
    out: dict[str, dict[str, float]] = {qid: {} for qid in queries}
    for (qid, doc), score in zip(pairs, np.asarray(scores, dtype=float).tolist()):
        out[qid][doc] = score
    return out


def reorder(run: evaluate.Run, scores: dict[str, dict[str, float]], k: int) -> evaluate.Run:
    """`run` with its top k of each question reordered by the reranker's scores (equal scores keep the first stage's
    order); the rest keeps its place below them. Reranked scores are shifted above the first stage's, so the list
    stays sorted by score."""
    out = {}
    for qid, ranked in run.items():
        head, tail = ranked[:k], ranked[k:]
        missing = [doc for doc, _ in head if doc not in scores.get(qid, {})]
        if missing:
            raise RerankError(f"question {qid}: {len(missing)} of its top {k} were not scored: score a deeper top-k.")
        top = sorted(((doc, scores[qid][doc]) for doc, _ in head), key=lambda item: -item[1])  # ties: first stage
        floor = min((s for _, s in top), default=0.0)
        shift = (max((s for _, s in tail), default=floor) - floor + 1.0) if tail else 0.0
        out[qid] = [(doc, s + shift) for doc, s in top] + tail
    return out


def sweep_depths(
    run: evaluate.Run, scores: dict[str, dict[str, float]], qrels: evaluate.Qrels, depths: tuple[int, ...]
) -> dict[int, tuple[float, float, float]]:
    """NDCG@10 (mean, 95% bootstrap interval) of `run` reranked at each k in `depths`, on the questions of `qrels`."""
    curve = {}
    for k in depths:
        per_q = evaluate.per_query_metrics(reorder(run, scores, k), qrels, ("ndcg@10",))
        curve[k] = evaluate.bootstrap_ci([v["ndcg@10"] for v in per_q.values()])
    return curve


def best_depth(curve: dict[int, tuple[float, float, float]]) -> int:
    """The k with the best dev mean; equal to three decimals, the smaller k (cheaper to serve)."""
    top = max(round(m, 3) for m, _, _ in curve.values())
    return min(k for k, (m, _, _) in curve.items() if round(m, 3) == top)


def latency_ms(
    model: Any, run: evaluate.Run, queries: dict[str, str], corpus: dict[str, dict[str, Any]], k: int, n: int = 20
) -> dict[str, float]:
    """Milliseconds to rerank one question's top k (one predict call per question, n questions): p50 and p95."""
    times = []
    for qid in list(queries)[:n]:
        texts = [(queries[qid], corpus[doc]["text"]) for doc, _ in run[qid][:k]]
        started = time.perf_counter()
        predict_logits(model, texts, max(k, 1))
        times.append((time.perf_counter() - started) * 1000)
    return {"p50_ms": float(np.percentile(times, 50)), "p95_ms": float(np.percentile(times, 95))}


def table_markdown(record: dict[str, Any]) -> str:
    """benchmarks/reranker_table.py's table as Markdown: one row per reranker, dev and test NDCG@10
    with intervals, the paired difference to BM25 on test."""
    lines = ["| reranker (from all-MiniLM-L6-v2, new 1-logit head) | k | dev NDCG@10 | test NDCG@10 | test Δ vs BM25 |"]
    lines.append("|---|---|---|---|---|")
    for name, row in record["table"].items():
        dev, test, d = row["dev"], row["test"], row["minus_bm25"]
        delta = "" if d is None else f"{d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]"
        label = "BM25 alone" if name == "bm25" else name
        lines.append(f"| {label} | {row['k'] or ''} | {dev[0]:.3f} [{dev[1]:.3f}, {dev[2]:.3f}] | "
                     f"{test[0]:.3f} [{test[1]:.3f}, {test[2]:.3f}] | {delta} |")  # fmt: skip
    return "\n".join(lines)
