"""Retrieval and its metrics: dense search with FAISS, BM25 with bm25s, and IR metrics from a run and qrels."""

from __future__ import annotations

import json
import math
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

from embtune_utils import config

# A run: query id → ranked list of (corpus id, score), best first. Qrels: query id → {corpus id: relevance}.
Run = dict[str, list[tuple[str, float]]]
Qrels = dict[str, dict[str, int]]

METRICS = ("ndcg@10", "mrr@10", "recall@1", "recall@5", "recall@10", "recall@100", "map@100")


# ---------------------------------------------------------------- metrics


def ndcg_at_k(ranked: list[str], relevant: dict[str, int], k: int) -> float:
    """Normalised discounted cumulative gain with binary gains, as sentence-transformers computes it."""
    dcg = sum(1.0 / math.log2(i + 2) for i, doc in enumerate(ranked[:k]) if relevant.get(doc, 0) > 0)
    n_rel = sum(1 for r in relevant.values() if r > 0)
    idcg = sum(1.0 / math.log2(i + 2) for i in range(min(n_rel, k)))
    return dcg / idcg if idcg else 0.0


def mrr_at_k(ranked: list[str], relevant: dict[str, int], k: int) -> float:
    """1 / rank of the first relevant result within the top k, else 0."""
    return next((1.0 / (i + 1) for i, doc in enumerate(ranked[:k]) if relevant.get(doc, 0) > 0), 0.0)


def recall_at_k(ranked: list[str], relevant: dict[str, int], k: int) -> float:
    """Share of the relevant documents found in the top k."""
    n_rel = sum(1 for r in relevant.values() if r > 0)
    return sum(1 for doc in ranked[:k] if relevant.get(doc, 0) > 0) / n_rel if n_rel else 0.0


def map_at_k(ranked: list[str], relevant: dict[str, int], k: int) -> float:
    """Average precision at the ranks of relevant hits in the top k, divided by min(k, number relevant)."""
    hits, total = 0, 0.0
    for i, doc in enumerate(ranked[:k]):
        if relevant.get(doc, 0) > 0:
            hits += 1
            total += hits / (i + 1)
    n_rel = sum(1 for r in relevant.values() if r > 0)
    return total / min(k, n_rel) if n_rel else 0.0


_METRIC_FNS = {"ndcg": ndcg_at_k, "mrr": mrr_at_k, "recall": recall_at_k, "map": map_at_k}


def per_query_metrics(run: Run, qrels: Qrels, metrics: tuple[str, ...] = METRICS) -> dict[str, dict[str, float]]:
    """Every metric for every query of `qrels` (a query missing from the run scores 0)."""
    out = {}
    for qid, relevant in qrels.items():
        ranked = [doc for doc, _ in run.get(qid, [])]
        out[qid] = {}
        for name in metrics:
            kind, k = name.split("@")
            out[qid][name] = _METRIC_FNS[kind](ranked, relevant, int(k))
    return out


def evaluate_run(run: Run, qrels: Qrels, metrics: tuple[str, ...] = METRICS) -> dict[str, float]:
    """Mean of each metric over the queries of `qrels`."""
    if not qrels:
        raise ValueError("No queries with relevance labels to evaluate: check the split's qrels.")
    per_query = per_query_metrics(run, qrels, metrics)
    return {name: float(np.mean([m[name] for m in per_query.values()])) for name in metrics}


# ---------------------------------------------------------------- dense retrieval (FAISS)


def doc_texts(corpus: dict[str, dict[str, Any]]) -> tuple[list[str], list[str]]:
    """Corpus ids and the text that is embedded or indexed for each (the chunk text)."""
    ids = list(corpus)
    return ids, [corpus[i]["text"] for i in ids]


def encode(model: Any, texts: list[str], batch_size: int | None = None, show_progress: bool = False) -> np.ndarray:
    """Unit-length float32 embeddings, so that inner product = cosine similarity."""
    batch_size = batch_size or config.settings().encode_batch_size
    emb = model.encode(
        texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=show_progress
    )
    return np.ascontiguousarray(emb, dtype=np.float32)


def model_fingerprint(model: Any) -> str:
    """A short hash of a model's weights (a sample of each tensor, or its ONNX file): caches change with the model."""
    import hashlib

    digest = hashlib.sha256(str(getattr(model, "truncate_dim", None)).encode())  # truncation changes the output
    first = model._first_module() if hasattr(model, "_first_module") else None
    onnx_file = getattr(getattr(first, "auto_model", None), "path", None)
    if isinstance(onnx_file, Path):  # an ONNX Runtime model has no torch parameters: hash its weights file
        digest.update(onnx_file.read_bytes())
    for name, param in model.named_parameters():
        flat = param.detach().reshape(-1)
        digest.update(name.encode() + str(tuple(param.shape)).encode())
        digest.update(flat[:: max(1, flat.numel() // 64)].float().cpu().numpy().tobytes())
    return digest.hexdigest()[:12]


def corpus_embeddings(model: Any, corpus: dict[str, dict[str, Any]], cache: bool = True) -> np.ndarray:
    """Embeddings of every corpus text, cached under artifacts/embeddings/ by model weights and corpus content."""
    import hashlib

    doc_ids, texts = doc_texts(corpus)
    key = hashlib.sha256(json.dumps([doc_ids, texts]).encode()).hexdigest()[:12]
    path = config.repo_root() / "artifacts" / "embeddings" / f"{model_fingerprint(model)}-{key}.npy"
    if cache and path.exists():
        return np.load(path)
    emb = encode(model, texts)
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, emb)
        tmp.replace(path)
    return emb


def flat_index(doc_emb: np.ndarray) -> Any:
    """An exact inner-product FAISS index over the document embeddings."""
    import faiss

    index = faiss.IndexFlatIP(doc_emb.shape[1])
    index.add(doc_emb)
    return index


def search_index(index: Any, doc_ids: list[str], query_ids: list[str], query_emb: np.ndarray, k: int = 100) -> Run:
    """Top-k documents per query from a FAISS index, as a run."""
    scores, idx = index.search(np.ascontiguousarray(query_emb, dtype=np.float32), min(k, index.ntotal))
    return {
        qid: [(doc_ids[j], float(s)) for j, s in zip(row_idx, row_scores) if j >= 0]
        for qid, row_idx, row_scores in zip(query_ids, idx, scores)
    }


def dense_run(
    model: Any, corpus: dict[str, dict[str, Any]], queries: dict[str, str], k: int = 100, cache: bool = True
) -> Run:
    """Embed the corpus (cached under the course's artifacts/ unless cache=False) and the queries; search exactly."""
    doc_ids = list(corpus)
    index = flat_index(corpus_embeddings(model, corpus, cache=cache))
    query_ids = list(queries)
    return search_index(index, doc_ids, query_ids, encode(model, [queries[q] for q in query_ids]), k)


# ---------------------------------------------------------------- BM25 (bm25s)


def _bm25_tokenize(texts: list[str]) -> Any:
    import bm25s
    import Stemmer

    return bm25s.tokenize(texts, stopwords="en", stemmer=Stemmer.Stemmer("english"), show_progress=False)


def bm25_index(corpus: dict[str, dict[str, Any]]) -> tuple[Any, list[str]]:
    """A BM25 index (bm25s, English stop words, Snowball stemming) and the corpus ids in index order."""
    import logging

    import bm25s

    logging.getLogger("bm25s").setLevel(logging.WARNING)  # its "Building index" DEBUG line, wherever logging is on

    doc_ids, texts = doc_texts(corpus)
    retriever = bm25s.BM25()
    retriever.index(_bm25_tokenize(texts), show_progress=False)
    return retriever, doc_ids


def bm25_search(index: tuple[Any, list[str]], queries: dict[str, str], k: int = 100) -> Run:
    """Top-k documents per query from a BM25 index, as a run."""
    retriever, doc_ids = index
    query_ids = list(queries)
    idx, scores = retriever.retrieve(
        _bm25_tokenize([queries[q] for q in query_ids]),
        k=min(k, len(doc_ids)),
        show_progress=False,
        n_threads=1,
    )
    return {
        qid: [(doc_ids[j], float(s)) for j, s in zip(row_idx, row_scores)]
        for qid, row_idx, row_scores in zip(query_ids, idx, scores)
    }


def bm25_run(corpus: dict[str, dict[str, Any]], queries: dict[str, str], k: int = 100) -> Run:
    """Index the corpus with BM25 and search it."""
    return bm25_search(bm25_index(corpus), queries, k)


def bootstrap_ci(
    values: list[float] | np.ndarray, n_resamples: int = 1000, level: float = 0.95, seed: int = config.SEED
) -> tuple[float, float, float]:
    """Mean of per-query values and a percentile bootstrap confidence interval (queries resampled with replacement)."""
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        raise ValueError("bootstrap_ci needs at least one per-query value: check that the split has questions.")
    means = v[np.random.default_rng(seed).integers(0, v.size, (n_resamples, v.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(v.mean()), float(lo), float(hi)


# ---------------------------------------------------------------- hybrid retrieval: fusing BM25 and dense runs

RRF_K = 60  # the constant of reciprocal rank fusion (Cormack et al., 2009)


def rrf(runs: list[Run], k: int = RRF_K, depth: int = 100) -> Run:
    """Reciprocal rank fusion: each document scores the sum of 1 / (k + rank) over the runs that retrieved it."""
    fused: Run = {}
    for qid in set().union(*runs):
        scores: dict[str, float] = {}
        for run in runs:
            for rank, (doc, _) in enumerate(run.get(qid, [])[:depth]):
                scores[doc] = scores.get(doc, 0.0) + 1.0 / (k + rank + 1)
        fused[qid] = sorted(scores.items(), key=lambda item: (-item[1], item[0]))  # ties: by id, not hash order
    return fused


def _min_max(ranked: list[tuple[str, float]]) -> dict[str, float]:
    if not ranked:
        return {}
    values = [s for _, s in ranked]
    lo, span = min(values), (max(values) - min(values)) or 1.0
    return {doc: (s - lo) / span for doc, s in ranked}


def weighted_fusion(dense: Run, sparse: Run, weight: float) -> Run:
    """Convex combination of per-query min-max normalised scores: weight × dense + (1 − weight) × sparse."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight={weight} must lie in [0, 1]: it is the dense run's share of the fused score.")
    fused: Run = {}
    for qid in set(dense) | set(sparse):
        d, s = _min_max(dense.get(qid, [])), _min_max(sparse.get(qid, []))
        scores = {doc: weight * d.get(doc, 0.0) + (1 - weight) * s.get(doc, 0.0) for doc in set(d) | set(s)}
        fused[qid] = sorted(scores.items(), key=lambda item: (-item[1], item[0]))  # ties: by id, not hash order
    return fused


def tune_fusion_weight(
    dense: Run, sparse: Run, qrels: Qrels, grid: tuple[float, ...] = tuple(i / 10 for i in range(11))
) -> tuple[float, dict[float, float]]:
    """The dense weight with the best NDCG@10 on these (dev) qrels, and the score of every weight tried."""
    scores = {w: evaluate_run(weighted_fusion(dense, sparse, w), qrels, ("ndcg@10",))["ndcg@10"] for w in grid}
    return max(scores, key=lambda w: (scores[w], -abs(w - 0.5))), scores


# ---------------------------------------------------------------- comparing two systems on the same questions


def ci_side(lo: float, hi: float) -> int:
    """Which side of 0 a 95% CI lies on: +1 wholly above, -1 wholly below, 0 when it spans 0 (no measurable
    difference). The one rule behind every verdict and forest-plot colour of the course."""
    return 1 if lo > 0 else -1 if hi < 0 else 0


def paired_test(
    a: list[float] | np.ndarray, b: list[float] | np.ndarray, n_resamples: int = 10000, seed: int = config.SEED
) -> dict[str, float]:
    """Per-query a − b: mean, a 95% bootstrap CI, and a two-sided sign-flip permutation p-value."""
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if diff.size == 0:
        raise ValueError("paired_test needs per-query values for the same questions in both systems.")
    rng = np.random.default_rng(seed)
    boot = diff[rng.integers(0, diff.size, (n_resamples, diff.size))].mean(axis=1)
    flips = rng.choice((-1.0, 1.0), size=(n_resamples, diff.size))
    null = np.abs((flips * diff).mean(axis=1))
    p = (1 + np.count_nonzero(null >= abs(diff.mean()) - 1e-12)) / (n_resamples + 1)
    lo, hi = np.quantile(boot, [0.025, 0.975])
    wins, losses = int((diff > 0).sum()), int((diff < 0).sum())
    return {"mean": float(diff.mean()), "lo": float(lo), "hi": float(hi), "p": float(p), "wins": wins, "losses": losses}


def metrics_with_ci(per_query: dict[str, dict[str, float]], metrics: tuple[str, ...] = METRICS) -> dict[str, Any]:
    """Each metric's mean over queries with its 95% bootstrap interval: {metric: (mean, lo, hi)}."""
    return {m: bootstrap_ci([v[m] for v in per_query.values()]) for m in metrics}


FAILURE_KINDS = ("right article, wrong chunk", "exact term missed", "wrong article")


def _exact_terms(text: str) -> set[str]:
    """Tokens a lexical retriever matches exactly and an embedding may blur: numbers, acronyms, names with digits."""
    import re

    tokens = re.findall(r"[A-Za-z0-9][\w-]*", text)
    return {t.lower() for t in tokens if any(c.isdigit() for c in t) or sum(c.isupper() for c in t) >= 2}


def failure_kind(query: str, top_doc: str, relevant: dict[str, int], corpus: dict[str, dict[str, Any]]) -> str:
    """Why a query's top-ranked chunk is wrong: same article as an answer, a missed exact term, or another article."""
    article = corpus[top_doc].get("metadata", {}).get("doc_id")
    if article is not None and any(corpus[d].get("metadata", {}).get("doc_id") == article for d in relevant):
        return FAILURE_KINDS[0]
    answer_text = " ".join(corpus[d]["text"] for d in relevant if d in corpus)
    if _exact_terms(query) & _exact_terms(answer_text) - _exact_terms(corpus[top_doc]["text"]):
        return FAILURE_KINDS[1]
    return FAILURE_KINDS[2]


# ---------------------------------------------------------------- embedding diagnostics


def alignment(query_emb: np.ndarray, doc_emb: np.ndarray) -> float:
    """Wang & Isola's alignment: mean squared distance between matched (query, relevant chunk) unit embeddings."""
    return float(np.mean(np.sum((query_emb - doc_emb) ** 2, axis=1)))


def uniformity(emb: np.ndarray, t: float = 2.0, max_points: int = 2000, seed: int = config.SEED) -> float:
    """Wang & Isola's uniformity: log mean exp(−t·‖x − y‖²) over pairs of embeddings (lower = more spread out)."""
    if len(emb) > max_points:
        emb = emb[np.random.default_rng(seed).choice(len(emb), max_points, replace=False)]
    sq = np.maximum(0.0, 2.0 - 2.0 * emb @ emb.T)  # unit vectors: ‖x − y‖² = 2 − 2 x·y
    pairs = sq[np.triu_indices(len(emb), k=1)]
    return float(np.log(np.mean(np.exp(-t * pairs))))


def spectrum(emb: np.ndarray) -> tuple[np.ndarray, float]:
    """Singular values of the centred embeddings (normalised to sum 1) and the effective rank exp(entropy)."""
    s = np.linalg.svd(emb - emb.mean(axis=0), compute_uv=False)
    p = s / s.sum()
    return p, float(np.exp(-np.sum(p * np.log(p + 1e-12))))


# ---------------------------------------------------------------- results on disk


def write_json(path: Path, obj: Any) -> Path:
    """Write JSON atomically (a temporary file renamed into place); NumPy numbers and tuples are converted."""

    def plain(o: Any) -> Any:
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        raise TypeError(f"{type(o).__name__} is not JSON serialisable")

    return config.write_text_atomic(path, json.dumps(obj, indent=2, default=plain) + "\n")


def load_results(name: str, mode: str | None = None) -> dict[str, Any] | None:
    """The record save_results wrote to results/<mode>/<name>.json (name, date, machine, results), or None."""
    path = config.results_dir(mode) / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def save_results(name: str, results: dict[str, Any], mode: str | None = None) -> Path:
    """Write measured results to results/<mode>/<name>.json with the date and machine, for the README."""
    record = {"name": name, "date": date.today().isoformat(), "machine": config.describe(), "results": results}
    return write_json(config.results_dir(mode) / f"{name}.json", record)
