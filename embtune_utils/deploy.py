"""Deployment: Matryoshka truncation, int8/binary quantization with rescoring, FAISS indexes, ONNX int8, and the
saved search artifact (model/ + index/) that `embtune search` loads."""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import os
import platform
import shutil
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

from embtune_utils import config, evaluate

MATRYOSHKA_DIMS = (384, 256, 128, 64)  # the dimensions notebook 05's Matryoshka loss trained
OVERSAMPLE = 4  # a quantized index hands k x this many candidates to rescoring
KINDS = ("flat", "ivf", "hnsw", "ivfpq", "int8", "binary", "binary_hnsw")
ARTIFACT_FORMAT = 3  # 3: a reranker may reorder the top k; 2: the artifact names its retriever; 1 was dense only
READABLE_FORMATS = (1, 2, 3)
SERVED = ("bm25", "dense", "hybrid", "hybrid weighted")  # what an artifact can serve; the hybrids fuse BM25 and dense
FUSION_DEPTH = 100  # candidates each run hands to fusion, as in notebook 06 and `embtune run`'s evaluation


class DeployError(ValueError):
    """A deployment setting or artifact the course cannot use; the message says what to do."""


# ---------------------------------------------------------------- Matryoshka and quantization


def truncate(emb: np.ndarray, dim: int) -> np.ndarray:
    """The first `dim` coordinates of each embedding, re-normalised to unit length (Matryoshka truncation)."""
    if not 0 < dim <= emb.shape[1]:
        raise DeployError(f"cannot truncate {emb.shape[1]}-dim embeddings to {dim}: pick 1..{emb.shape[1]}.")
    part = np.ascontiguousarray(emb[:, :dim], dtype=np.float32)
    return part / np.maximum(np.linalg.norm(part, axis=1, keepdims=True), 1e-12)


def int8_ranges(calibration: np.ndarray) -> np.ndarray:
    """Per-dimension [min, max] of calibration embeddings (the corpus), shape (2, dim): the int8 scale."""
    return np.stack([calibration.min(axis=0), calibration.max(axis=0)]).astype(np.float32)


def to_int8(emb: np.ndarray, ranges: np.ndarray) -> np.ndarray:
    """int8 codes with sentence-transformers' `quantize_embeddings`, clipped to the calibrated range first."""
    from sentence_transformers import quantize_embeddings

    # Without the clip, a query coordinate above the corpus maximum would wrap around from +127 to -128.
    clipped = np.clip(emb, ranges[0], ranges[1])
    return quantize_embeddings(clipped, precision="int8", ranges=ranges)


def from_int8(codes: np.ndarray, ranges: np.ndarray) -> np.ndarray:
    """Approximate float vectors back from int8 codes (the inverse of `to_int8`'s linear map)."""
    steps = (ranges[1] - ranges[0]) / 255
    return ((codes.astype(np.float32) + 128) * steps + ranges[0]).astype(np.float32)


def to_binary(emb: np.ndarray) -> np.ndarray:
    """One bit per dimension (positive or not), packed 8 to a byte: `quantize_embeddings(..., "ubinary")`."""
    from sentence_transformers import quantize_embeddings

    if emb.shape[1] % 8:
        raise DeployError(f"binary quantization needs a dimension divisible by 8, got {emb.shape[1]}.")
    return quantize_embeddings(emb, precision="ubinary")


# ---------------------------------------------------------------- FAISS indexes


def default_nlist(n: int) -> int:
    """IVF lists for `n` vectors: about 4·√n, but at least 39 training vectors per list (FAISS's rule)."""
    return int(max(4, min(4 * np.sqrt(n), n // 39)))


def pq_bits(n: int) -> int:
    """Bits per product-quantizer code for `n` training vectors: 8 (256 centroids) needs 39 x 256 of them."""
    return int(np.clip(np.floor(np.log2(max(n, 2) / 39)), 1, 8))


@dataclass
class Index:
    """A FAISS index, how queries are encoded for it, and optional rescoring against int8 document vectors."""

    label: str
    faiss_index: Any
    kind: str
    dim: int
    ranges: np.ndarray | None = None  # int8 calibration (kind int8, or any index with rescoring)
    rescore: np.ndarray | None = None  # int8 document vectors for rescoring (kept on disk when deployed)
    oversample: int = OVERSAMPLE

    def score_name(self) -> str:
        """What the scores of `search` are: cosine (float or rescored), an int8 dot product, or minus Hamming bits."""
        if self.rescore is not None or self.kind not in ("int8", "binary", "binary_hnsw"):
            return "cosine"
        return "int8 dot product" if self.kind == "int8" else "minus Hamming distance"

    def nbytes(self) -> int:
        """Bytes of the index itself (its FAISS serialization), what a server keeps in RAM."""
        import faiss

        serialize = faiss.serialize_index_binary if self.kind.startswith("binary") else faiss.serialize_index
        return int(serialize(self.faiss_index).nbytes)

    def rescore_nbytes(self) -> int:
        """Bytes of the int8 rescoring vectors (0 without rescoring); they can stay on disk (memory-mapped)."""
        return 0 if self.rescore is None else int(self.rescore.nbytes)

    @property
    def ntotal(self) -> int:
        """Vectors in the index (as a FAISS index says it), so evaluate.search_index can search this too."""
        return self.faiss_index.ntotal

    def _encode(self, q: np.ndarray) -> np.ndarray:
        if self.kind == "int8":
            return to_int8(q, self.ranges).astype(np.float32)
        if self.kind.startswith("binary"):
            return to_binary(q)
        return np.ascontiguousarray(q, dtype=np.float32)

    def search(self, query_emb: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Scores and row numbers of the top `k` documents per query (float query embeddings in, best first)."""
        if query_emb.ndim != 2 or query_emb.shape[1] < self.dim:
            raise DeployError(
                f"query embeddings of shape {query_emb.shape} for an index of {self.dim}-dim vectors: encode the "
                f"queries (a 2-D array) with the model the index was built from, which gives at least {self.dim} dims."
            )
        q = truncate(query_emb, self.dim) if query_emb.shape[1] != self.dim else query_emb
        depth = min(k * self.oversample if self.rescore is not None else k, self.ntotal)
        scores, idx = self.faiss_index.search(self._encode(q), depth)
        if self.kind.startswith("binary"):
            scores = -scores.astype(np.float32)  # Hamming distance: fewer differing bits is better
        if self.rescore is None:
            return scores[:, :k], idx[:, :k]
        docs = from_int8(self.rescore[np.maximum(idx, 0)], self.ranges)  # (queries, depth, dim)
        rescored = np.einsum("qd,qkd->qk", q, docs)
        rescored[idx < 0] = -np.inf
        order = np.argsort(-rescored, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(rescored, order, 1), np.take_along_axis(idx, order, 1)


def factory_string(kind: str, n: int, dim: int, **params: int) -> str:
    """The `faiss.index_factory` string of an index kind for `n` vectors of `dim` dims (binary kinds: for
    `faiss.index_binary_factory`); `params` set nlist, m (HNSW links), m_pq and nbits (product quantizer)."""
    if kind not in KINDS:
        raise DeployError(f"unknown index kind {kind!r}: use one of {', '.join(KINDS)}.")
    nlist = params.get("nlist") or default_nlist(n)
    m = params.get("m", 32)
    return {
        "flat": "Flat",
        "ivf": f"IVF{nlist},Flat",
        "hnsw": f"HNSW{m},Flat",
        "ivfpq": f"IVF{nlist},PQ{params.get('m_pq') or dim // 8}x{params.get('nbits') or pq_bits(n)}",
        "int8": "SQ8_direct_signed",
        "binary": "BFlat",
        "binary_hnsw": f"BHNSW{m}",
    }[kind]


def build_index(doc_emb: np.ndarray, kind: str = "flat", rescore: bool = False, **params: int) -> Index:
    """A FAISS index (from `factory_string`) over unit-length float document embeddings; `params` set nlist/nprobe,
    m/ef_search, m_pq/nbits."""
    import faiss

    n, dim = doc_emb.shape
    spec = factory_string(kind, n, dim, **params)
    ranges = int8_ranges(doc_emb) if (kind == "int8" or rescore) else None
    if kind.startswith("binary"):
        index = faiss.index_binary_factory(dim, spec)
    else:
        index = faiss.index_factory(dim, spec, faiss.METRIC_INNER_PRODUCT)
    if kind in ("ivf", "ivfpq"):
        index.train(doc_emb)
        index.nprobe = params.get("nprobe", 8)
    elif kind in ("hnsw", "binary_hnsw"):
        index.hnsw.efSearch = params.get("ef_search", 64)
    label = kind + "".join(f" {k}={v}" for k, v in params.items())
    built = Index(label, index, kind, dim, ranges=ranges)
    if kind == "int8":
        index.add(to_int8(doc_emb, ranges).astype(np.float32))
    elif kind.startswith("binary"):
        index.add(to_binary(doc_emb))
    else:
        index.add(np.ascontiguousarray(doc_emb, dtype=np.float32))
    if rescore:
        built.rescore = to_int8(doc_emb, ranges)
        built.label += " + rescore"
    return built


# ---------------------------------------------------------------- measuring a configuration


def search_run(index: Index, doc_ids: list[str], query_ids: list[str], query_emb: np.ndarray, k: int = 10) -> dict:
    """Top-k documents per query from an `Index`, as a run (query id → [(doc id, score)])."""
    return evaluate.search_index(index, doc_ids, query_ids, query_emb, k)


def search_speed(index: Index, query_emb: np.ndarray, k: int = 10, max_single: int = 200) -> dict[str, float]:
    """p50/p95 single-query search latency (ms, query already embedded) and batched queries per second."""
    single = []
    for row in query_emb[:max_single]:
        start = time.perf_counter()
        index.search(row[None, :], k)
        single.append(time.perf_counter() - start)
    start = time.perf_counter()
    index.search(query_emb, k)
    batch_s = time.perf_counter() - start
    return {
        "p50_ms": 1000 * float(np.percentile(single, 50)),
        "p95_ms": 1000 * float(np.percentile(single, 95)),
        "queries_per_s": len(query_emb) / batch_s,
    }


def encode_speed(models: dict[str, Any], texts: list[str], repeat: int = 2) -> dict[str, float]:
    """Passages per second of each model on the same texts, the models taking turns; the best of `repeat` rounds."""
    best = dict.fromkeys(models, 0.0)
    for model in models.values():  # one warm-up call each: first calls pay for lazy initialisation
        evaluate.encode(model, texts[:4])
    for _ in range(repeat):
        for name, model in models.items():
            start = time.perf_counter()
            evaluate.encode(model, texts)
            best[name] = max(best[name], len(texts) / (time.perf_counter() - start))
    return best


def run_quality(run: evaluate.Run, qrels: evaluate.Qrels) -> tuple[np.ndarray, float, float]:
    """NDCG@10 of each query of `qrels` (in its order: for paired tests) and the 95% bootstrap CI of their mean."""
    ndcg = np.array([m["ndcg@10"] for m in evaluate.per_query_metrics(run, qrels, ("ndcg@10",)).values()])
    _, lo, hi = evaluate.bootstrap_ci(ndcg)
    return ndcg, lo, hi


def spec_index(doc_emb: np.ndarray, spec: dict[str, Any]) -> Index:
    """The index a deployment-table row's spec describes, over `doc_emb` truncated to its dimensions."""
    return build_index(truncate(doc_emb, spec["dim"]), spec["kind"], spec["rescore"], **spec["params"])


def measure(
    model_name: str,
    doc_emb: np.ndarray,
    query_emb: np.ndarray,
    doc_ids: list[str],
    qrels: evaluate.Qrels,
    dim: int | None = None,
    kind: str = "flat",
    rescore: bool = False,
    **params: int,
) -> dict[str, Any]:
    """One row of the deployment table: build the index for a configuration, then its quality (NDCG@10: mean, 95%
    bootstrap CI and the per-query values), bytes and speed."""
    dim = dim or doc_emb.shape[1]
    index = build_index(truncate(doc_emb, dim), kind, rescore, **params)
    query_ids = list(qrels)
    run = search_run(index, doc_ids, query_ids, query_emb)
    ndcg, lo, hi = run_quality(run, qrels)
    return {
        "config": f"{model_name} {dim}d {index.label}",
        "model": model_name,
        "spec": {"dim": dim, "kind": kind, "rescore": rescore, "params": params},
        "ndcg@10": float(ndcg.mean()),
        "ndcg@10_ci": [lo, hi],
        "per_query": ndcg,  # NDCG@10 of each query of `qrels`, in order: for paired tests (saved_rows drops it)
        "index_bytes": index.nbytes(),
        "rescore_bytes": index.rescore_nbytes(),
        **search_speed(index, query_emb),
    }


def fuse(served: str, dense: evaluate.Run, sparse: evaluate.Run, weight: float | None = None) -> evaluate.Run:
    """The run a retriever serves from a dense and a BM25 run: one of them, RRF, or the weighted fusion."""
    if served not in SERVED:
        raise DeployError(f"retriever {served!r}: use one of {', '.join(SERVED)}.")
    if served == "hybrid weighted" and weight is None:
        raise DeployError("the weighted hybrid needs its dense weight (tune it on dev: evaluate.tune_fusion_weight).")
    fused = {
        "bm25": lambda: sparse,
        "dense": lambda: dense,
        "hybrid": lambda: evaluate.rrf([dense, sparse]),
        "hybrid weighted": lambda: evaluate.weighted_fusion(dense, sparse, weight),
    }
    return fused[served]()


def served_run(
    served: str,
    index: Index | None,
    bm25: tuple[Any, list[str]] | None,
    doc_ids: list[str],
    queries: dict[str, str],
    query_emb: np.ndarray | None,
    weight: float | None = None,
    k: int = 10,
) -> evaluate.Run:
    """Top-k per query from the served retriever: the dense `index` (query_emb in `queries` order), BM25, or both
    fused over FUSION_DEPTH candidates each. Deployment.run and the measurements both go through here."""
    depth = k if served in ("bm25", "dense") else max(k, FUSION_DEPTH)
    dense = search_run(index, doc_ids, list(queries), query_emb, k=depth) if served != "bm25" else {}
    sparse = evaluate.bm25_search(bm25, queries, k=depth) if served != "dense" else {}
    return {qid: ranked[:k] for qid, ranked in fuse(served, dense, sparse, weight).items()}


def bm25_nbytes(bm25: tuple[Any, list[str]]) -> int:
    """Bytes of a BM25 index as saved (bm25s' sparse matrix and vocabulary files)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        bm25[0].save(tmp, show_progress=False)
        return sum(p.stat().st_size for p in Path(tmp).iterdir())


def measure_hybrid(
    served: str,
    dense_row: dict[str, Any],
    doc_emb: np.ndarray,
    bm25: tuple[Any, list[str]],
    queries: dict[str, str],
    query_emb: np.ndarray,
    qrels: evaluate.Qrels,
    weight: float | None = None,
    max_single: int = 200,
) -> dict[str, Any]:
    """A row of the deployment table for BM25 fused with a dense row's configuration (`measure`'s row): quality,
    both indexes' bytes, and single-query latency of both searches plus the fusion (queries already embedded)."""
    spec = dense_row["spec"]
    index = spec_index(doc_emb, spec)
    doc_ids = bm25[1]
    query_ids = list(qrels)
    asked = {q: queries[q] for q in query_ids}
    run = served_run(served, index, bm25, doc_ids, asked, query_emb, weight)
    ndcg, lo, hi = run_quality(run, qrels)
    single = []
    for i, qid in enumerate(query_ids[:max_single]):
        start = time.perf_counter()
        served_run(served, index, bm25, doc_ids, {qid: asked[qid]}, query_emb[i : i + 1], weight)
        single.append(time.perf_counter() - start)
    start = time.perf_counter()
    served_run(served, index, bm25, doc_ids, asked, query_emb, weight)
    batch_s = time.perf_counter() - start
    how = "RRF" if served == "hybrid" else f"weighted, dense weight {weight:g}"
    return {
        "config": f"{dense_row['config']} + BM25 ({how})",
        "model": dense_row["model"],
        "spec": spec | {"served": served, "weight": weight},
        "ndcg@10": float(ndcg.mean()),
        "ndcg@10_ci": [lo, hi],
        "per_query": ndcg,
        "index_bytes": index.nbytes() + bm25_nbytes(bm25),
        "rescore_bytes": index.rescore_nbytes(),
        "p50_ms": 1000 * float(np.percentile(single, 50)),
        "p95_ms": 1000 * float(np.percentile(single, 95)),
        "queries_per_s": len(query_ids) / batch_s,
    }


def measure_reranked(
    first_row: dict[str, Any],
    doc_emb: np.ndarray,
    bm25: tuple[Any, list[str]],
    queries: dict[str, str],
    query_emb: np.ndarray,
    qrels: evaluate.Qrels,
    reranker: Any,
    corpus: dict[str, dict[str, Any]],
    depths: tuple[int, ...],
) -> list[dict[str, Any]]:
    """Rows of the deployment table for a cross-encoder reranking the top k of a row's served retriever (a dense row
    or a hybrid row of `measure_hybrid`), one per k in `depths`: quality, the first stage's bytes, and single-query
    latency as the first stage's p50/p95 plus the reranker's p50/p95 over one question's k chunks (from
    rerank.latency_ms; sums of percentiles, not percentiles of sums). Every pair is scored once, at the largest k."""
    from embtune_utils import rerank

    spec = first_row["spec"]
    index = spec_index(doc_emb, spec)
    asked = {q: queries[q] for q in qrels}
    served, weight = spec.get("served", "dense"), spec.get("weight")
    first = served_run(served, index, bm25, bm25[1], asked, query_emb, weight, k=max(10, *depths))
    start = time.perf_counter()
    scores = rerank.candidate_scores(reranker, [first], asked, corpus, max(depths))
    per_pair_s = (time.perf_counter() - start) / max(1, sum(map(len, scores.values())))
    rows = []
    for k in depths:
        run = rerank.reorder(first, scores, k)
        ndcg, lo, hi = run_quality(run, qrels)
        latency = rerank.latency_ms(reranker, first, asked, corpus, k)
        rows.append({
            "config": f"{first_row['config']} + rerank top {k}",
            "model": first_row["model"],
            "spec": spec | {"rerank": k},
            "ndcg@10": float(ndcg.mean()),
            "ndcg@10_ci": [lo, hi],
            "per_query": ndcg,
            "index_bytes": first_row["index_bytes"],
            "rescore_bytes": first_row["rescore_bytes"],
            "p50_ms": first_row["p50_ms"] + latency["p50_ms"],
            "p95_ms": first_row["p95_ms"] + latency["p95_ms"],
            "queries_per_s": 1.0 / (1.0 / first_row["queries_per_s"] + k * per_pair_s),
        })  # fmt: skip
    return rows


def saved_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows without their per-query values, to save to results/ (a few numbers per row, not one per query)."""
    return [{k: v for k, v in row.items() if k != "per_query"} for row in rows]


def finish_table(rows: list[dict[str, Any]], reference: str, encode_per_s: dict[str, float]) -> list[dict[str, Any]]:
    """Add NDCG@10 as % of the `reference` row's, index size as times smaller, and each row's model's encode speed."""
    ref = next((r for r in rows if r["config"] == reference), None)
    if ref is None:
        raise DeployError(f"no row named {reference!r} to compare against; the rows are {[r['config'] for r in rows]}.")
    for row in rows:
        row["pct_of_ref"] = 100 * row["ndcg@10"] / ref["ndcg@10"]
        row["x_smaller"] = ref["index_bytes"] / row["index_bytes"]
        row["encode_per_s"] = encode_per_s.get(row["model"], float("nan"))
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """The deployment table as aligned text, one configuration per line."""
    head = (
        f"{'configuration':<42} {'NDCG@10':>7} {'% ref':>6} {'index':>9} {'x less':>6} {'rescore':>9} "
        f"{'p50 ms':>7} {'p95 ms':>7} {'queries/s':>10} {'encode/s':>8}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['config']:<42} {r['ndcg@10']:7.3f} {r['pct_of_ref']:6.1f} {human_bytes(r['index_bytes']):>9} "
            f"{r['x_smaller']:6.1f} {human_bytes(r['rescore_bytes']) if r['rescore_bytes'] else '-':>9} "
            f"{r['p50_ms']:7.3f} {r['p95_ms']:7.3f} {r['queries_per_s']:10.0f} {r['encode_per_s']:8.1f}"
        )
    return "\n".join(lines)


def human_bytes(n: float) -> str:
    """Bytes as a short human string (KiB, MiB)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def pareto_front(rows: list[dict[str, Any]], cost: str) -> list[dict[str, Any]]:
    """The rows that no other row beats on both NDCG@10 (higher) and `cost` (lower), cheapest first."""
    front = [
        r
        for r in rows
        if not any(
            o["ndcg@10"] >= r["ndcg@10"] and o[cost] <= r[cost] and (o["ndcg@10"] > r["ndcg@10"] or o[cost] < r[cost])
            for o in rows
        )
    ]
    return sorted(front, key=lambda r: r[cost])


def recommend(rows: list[dict[str, Any]], min_pct: float = 99.0) -> dict[str, Any]:
    """The smallest index (then the lowest p95 latency) among rows that keep at least `min_pct`% of the reference."""
    good = [r for r in rows if r["pct_of_ref"] >= min_pct]
    if not good:
        raise DeployError(f"no configuration keeps {min_pct}% of the reference quality: lower min_pct.")
    return min(good, key=lambda r: (r["index_bytes"], r["p95_ms"]))


# ---------------------------------------------------------------- ONNX int8


def onnx_config() -> str:
    """The ONNX Runtime quantization config for this CPU: arm64, avx512_vnni, or avx2 (any x86-64 since 2013)."""
    if platform.machine().lower() in ("arm64", "aarch64"):
        return "arm64"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        flags = ""
    return "avx512_vnni" if "avx512_vnni" in flags else "avx2"


@contextlib.contextmanager
def quiet_export() -> Iterator[None]:
    """Silence Python warnings, the exporter's progress lines and the info/warning logs of the libraries involved."""
    names = ("sentence_transformers", "transformers", "torch.onnx", "torch.export", "onnxscript", "onnx_ir", "")
    # "": the root logger, where onnxruntime's quantizer logs its advice to pre-process the model first
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)


def onnx_int8_file(model_dir: Path) -> Path:
    """Where `export_onnx_int8` writes the int8 model for this CPU: onnx/model_qint8_<cpu>.onnx in the model folder."""
    return Path(model_dir) / "onnx" / f"model_qint8_{onnx_config()}.onnx"


def export_onnx(model: Any, path: Path) -> Path:
    """Export a SentenceTransformer's transformer to one fp32 ONNX file with `torch.onnx.export`: the tokenizer's
    inputs, `last_hidden_state` first among the outputs, batch size and sequence length left dynamic."""
    import torch

    sample = dict(model.tokenizer(["a sample", "a longer sample sentence"], padding=True, return_tensors="pt"))
    batch, length = torch.export.Dim("batch"), torch.export.Dim("sequence")
    with quiet_export():
        torch.onnx.export(
            model[0].auto_model.eval(),
            (),
            str(path),
            kwargs=sample,
            input_names=list(sample),
            output_names=["last_hidden_state"],  # the pooler's output, if any, keeps its generated name
            dynamic_shapes={name: {0: batch, 1: length} for name in sample},
            dynamo=True,
            external_data=False,  # one file, weights inside: what the artifact copies and checksums
        )
    return Path(path)


def export_onnx_int8(model_dir: Path) -> Path:
    """Export a saved model to ONNX with int8 weights (dynamic quantization); returns the file, reused if present."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from sentence_transformers import SentenceTransformer

    target = onnx_int8_file(model_dir)
    if target.is_file():
        return target
    if not (Path(model_dir) / "modules.json").is_file():
        raise DeployError(f"{model_dir} is not a saved sentence-transformers model: run notebook 05 first.")
    target.parent.mkdir(parents=True, exist_ok=True)
    fp32, tmp = target.with_name("model_fp32.onnx.tmp"), target.with_name(target.name + ".tmp")
    try:
        export_onnx(SentenceTransformer(str(model_dir), device="cpu"), fp32)
        with quiet_export():
            quantize_dynamic(
                str(fp32),
                str(tmp),
                weight_type=QuantType.QInt8,
                per_channel=True,
                reduce_range=onnx_config() == "avx2",  # 7-bit weights avoid int16 overflow without VNNI (ORT's advice)
                op_types_to_quantize=["MatMul"],  # the linear layers; embeddings and LayerNorm stay fp32
            )
        tmp.replace(target)  # whole or absent: never a half-written file under the final name
    finally:
        fp32.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)
    return target


@functools.cache
def _onnx_encoder_class() -> type:
    """OnnxEncoder, made on first use so that importing this module does not import torch."""
    import onnxruntime as ort
    import torch

    class OnnxEncoder(torch.nn.Module):
        """Stands in for the transformer inside a SentenceTransformer: runs an ONNX file with ONNX Runtime on the
        CPU, so the model's own tokenizer, pooling and normalization still apply."""

        def __init__(self, path: Path, model_config: Any) -> None:
            super().__init__()
            self.path, self.config = Path(path), model_config
            self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            self.input_names = [node.name for node in self.session.get_inputs()]

        def forward(self, **features: Any) -> dict[str, Any]:
            feeds = {name: features[name].cpu().numpy() for name in self.input_names}
            (hidden,) = self.session.run(["last_hidden_state"], feeds)
            return {"last_hidden_state": torch.from_numpy(hidden)}

    return OnnxEncoder


def load_onnx(model_dir: Path, onnx_file: Path | str) -> Any:
    """A SentenceTransformer whose transformer is `onnx_file` (inside `model_dir`), run with ONNX Runtime."""
    from sentence_transformers import SentenceTransformer

    file_name = Path(onnx_file)
    file_name = file_name.relative_to(model_dir) if file_name.is_absolute() else file_name
    if not (Path(model_dir) / file_name).is_file():
        raise DeployError(
            f"no ONNX file {file_name} in {model_dir}: export it with deploy.export_onnx_int8({str(model_dir)!r})."
        )
    model = SentenceTransformer(str(model_dir), device="cpu")
    model[0].model = _onnx_encoder_class()(Path(model_dir) / file_name, model[0].model.config)  # torch weights go
    return model


# ---------------------------------------------------------------- the deployable artifact


def artifact_dir(mode: str | None = None) -> Path:
    """Where notebook 07 saves the deployable artifact (model/ + index/)."""
    return config.artifacts_dir(mode) / "deploy"


def _write_index(
    folder: Path,
    onnx_file: str | None,
    corpus: dict[str, dict[str, Any]],
    index: Index | None,
    params: dict[str, Any],
    quality: dict[str, Any],
    served: str = "dense",
    weight: float | None = None,
    model: str | None = "../model",
    rerank: dict[str, Any] | None = None,
) -> None:
    """Write index.faiss and rescore_int8.npy (dense), bm25/ (BM25), chunks.jsonl and metadata.json into a new
    folder; `served` names the retriever `embtune search` runs from them, `rerank` ({model, k}: a cross-encoder
    folder relative to it and how many of the served top chunks it reorders) the reranker on top, if any."""
    import faiss

    if served not in SERVED:
        raise DeployError(f"retriever {served!r}: use one of {', '.join(SERVED)}.")
    if (index is None) != (served == "bm25"):
        raise DeployError(f"retriever {served!r} {'needs a' if index is None else 'takes no'} dense index.")
    folder.mkdir(parents=True)
    if index is not None:
        write = faiss.write_index_binary if index.kind.startswith("binary") else faiss.write_index
        write(index.faiss_index, str(folder / "index.faiss"))
        if index.rescore is not None:
            np.save(folder / "rescore_int8.npy", index.rescore)
    if served != "dense":
        evaluate.bm25_index(corpus)[0].save(str(folder / "bm25"), show_progress=False)
    with open(folder / "chunks.jsonl", "w", encoding="utf-8") as f:
        for doc_id, doc in corpus.items():
            f.write(json.dumps({"_id": doc_id, "title": doc.get("title", ""), "text": doc["text"]}) + "\n")
    if rerank is not None:  # the reranker's files are checked on load like index/'s
        rerank = rerank | {"sha256": checksums(Path(os.path.normpath(folder.parent / Path(rerank["model"]).name)))}
    metadata = {
        "format": ARTIFACT_FORMAT,
        "retriever": {"served": served, "weight": weight, "depth": FUSION_DEPTH, "rerank": rerank},
        "model": model if index is not None else None,
        "onnx_file": onnx_file,
        "index": None if index is None else {"kind": index.kind, "dim": index.dim, "params": params},
        "rescore": index is not None and index.rescore is not None,
        "ranges": None if index is None or index.ranges is None else index.ranges.tolist(),
        "n_docs": len(corpus),
        "quality": quality,
        "created": date.today().isoformat(),
        "machine": config.describe(),
        "sha256": checksums(folder),  # load_artifact checks them
    }
    if index is not None:
        metadata["index"]["oversample"] = index.oversample
    evaluate.write_json(folder / "metadata.json", metadata)


def sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes (read in 1 MiB blocks)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def checksums(folder: Path) -> dict[str, str]:
    """The SHA-256 of every file under `folder`, by its path relative to it (what _check_files verifies)."""
    return {p.relative_to(folder).as_posix(): sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def _whole(path: Path) -> Path:
    """`path`, or its `.old` copy when a save was killed between its two renames (the old one is whole)."""
    old = path.with_name(path.name + ".old")
    return old if not path.exists() and old.exists() else path


def _check_files(index_dir: Path, expected: dict[str, str]) -> None:
    """Raise a DeployError if a file of index/ is missing or its bytes differ from those saved."""
    for name, digest in expected.items():
        path = index_dir / name
        if not path.is_file() or sha256(path) != digest:
            why = "is missing" if not path.is_file() else "does not match the checksum saved with it"
            raise DeployError(f"{path} {why} (a damaged or half-copied artifact): save the artifact again.")


def swap_in(tmp: Path, folder: Path) -> Path:
    """Replace `folder` by the finished `tmp` folder (two renames), leaving the old one whole until the last step."""
    if (whole := _whole(folder)) != folder:  # a save killed between its two renames: `.old` is the whole one
        whole.replace(folder)
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.replace(old)
    tmp.replace(folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def save_artifact(
    folder: Path,
    model_dir: Path,
    onnx_file: Path | None,
    corpus: dict[str, dict[str, Any]],
    index: Index,
    params: dict[str, Any],
    quality: dict[str, Any],
    served: str = "dense",
    weight: float | None = None,
) -> Path:
    """Write model/ (with its ONNX file, if any) and index/ (FAISS index, int8 rescoring vectors, BM25 for a hybrid,
    chunks, metadata).

    Written to a temporary folder first and renamed into place, so an interrupted save leaves the old artifact whole.
    """
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(model_dir, tmp / "model", ignore=shutil.ignore_patterns("checkpoint-*"))
    onnx_name = None if onnx_file is None else Path(onnx_file).relative_to(model_dir).as_posix()
    _write_index(tmp / "index", onnx_name, corpus, index, params, quality, served, weight)
    return swap_in(tmp, folder)


def save_index(
    folder: Path,
    corpus: dict[str, dict[str, Any]],
    index: Index | None,
    params: dict[str, Any],
    quality: dict[str, Any],
    served: str = "dense",
    weight: float | None = None,
    model: str = "model",
    rerank: dict[str, Any] | None = None,
) -> Path:
    """Write only index/ next to an existing model folder (`folder`/`model`, as `embtune run` does), atomically;
    BM25 alone needs no model. Returns index/."""
    target = Path(folder) / "index"
    if index is not None and not (Path(folder) / model / "modules.json").is_file():
        raise DeployError(f"{folder} has no {model}/ folder: save the model before its index.")
    if rerank is not None and not (Path(os.path.normpath(target / rerank["model"])) / "config.json").is_file():
        raise DeployError(f"{folder} has no reranker at index/{rerank['model']}: save the reranker before its index.")
    tmp = target.with_name("index.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    _write_index(tmp, None, corpus, index, params, quality, served, weight, model=f"../{model}", rerank=rerank)
    return swap_in(tmp, target)


@dataclass
class Deployment:
    """A loaded artifact: the encoder and dense index and/or the BM25 index, and the chunks; `search(text)` returns
    the top chunks from the retriever it was saved with."""

    model: Any  # None when the artifact serves BM25 alone
    index: Index | None
    chunks: list[dict[str, Any]]
    metadata: dict[str, Any]
    bm25: tuple[Any, list[str]] | None = None
    reranker: Any = None  # a CrossEncoder when the artifact reranks the served top k

    @property
    def served(self) -> str:
        """The retriever this artifact serves: bm25, dense, hybrid (RRF) or hybrid weighted."""
        return self.metadata.get("retriever", {}).get("served", "dense")

    def score_name(self) -> str:
        """What the printed scores are."""
        names = {"bm25": "BM25", "hybrid": "reciprocal rank fusion of dense and BM25"}
        if self.served == "hybrid weighted":
            weight = self.metadata["retriever"]["weight"]
            names["hybrid weighted"] = f"{weight:g} x dense + {1 - weight:g} x BM25, each min-max scaled per query"
        name = names.get(self.served) or self.index.score_name()
        if rerank := self.metadata.get("retriever", {}).get("rerank"):
            return f"reranker score (top {rerank['k']} of {name}, reordered by the cross-encoder)"
        return name

    def run(self, queries: dict[str, str], k: int = 10) -> evaluate.Run:
        """The top `k` chunk ids and scores per query (query id → text), from the served retriever."""
        if not all(text.strip() for text in queries.values()):
            raise DeployError("the query is empty: pass some text to search for.")
        texts = list(queries.values())
        emb = None if self.model is None else evaluate.encode(self.model, texts, batch_size=min(len(texts), 64))
        doc_ids = [c["_id"] for c in self.chunks]
        weight = self.metadata.get("retriever", {}).get("weight")
        rerank = self.metadata.get("retriever", {}).get("rerank")
        if not rerank:
            return served_run(self.served, self.index, self.bm25, doc_ids, queries, emb, weight, k)
        from embtune_utils import rerank as reranking

        run = served_run(self.served, self.index, self.bm25, doc_ids, queries, emb, weight, max(k, rerank["k"]))
        chunks = {c["_id"]: c for c in self.chunks}
        scores = reranking.candidate_scores(self.reranker, [run], queries, chunks, rerank["k"])
        return {qid: ranked[:k] for qid, ranked in reranking.reorder(run, scores, rerank["k"]).items()}

    def search(self, query: str, k: int = 5) -> list[dict[str, Any]]:
        """The top `k` chunks for a query: rank, id, score, title, text."""
        by_id = {c["_id"]: c for c in self.chunks}
        hits = self.run({"q": query}, k)["q"]
        return [
            {"rank": r + 1, "id": doc_id, "score": float(s)} | {f: by_id[doc_id][f] for f in ("title", "text")}
            for r, (doc_id, s) in enumerate(hits)
        ]


def load_artifact(folder: Path | str) -> Deployment:
    """Load an artifact written by `save_artifact`; a missing or foreign folder is a DeployError that says why."""
    import faiss

    folder = _whole(Path(folder))
    index_dir = _whole(folder / "index")
    meta_path = index_dir / "metadata.json"
    if not meta_path.is_file():
        raise DeployError(
            f"{folder} has no index/metadata.json: it is not a deployment artifact. Run notebook 07 (it saves one to "
            f"{artifact_dir().relative_to(config.repo_root())}) or pass --artifact with the folder it printed."
        )
    metadata = json.loads(meta_path.read_text())
    if metadata.get("format") not in READABLE_FORMATS:
        raise DeployError(
            f"{folder} has artifact format {metadata.get('format')}, this code reads {READABLE_FORMATS}: save the "
            "artifact again with this version, or install the version that wrote it."
        )
    _check_files(index_dir, metadata.get("sha256", {}))  # artifacts saved before checksums existed have none
    chunks = [json.loads(line) for line in (index_dir / "chunks.jsonl").read_text().splitlines()]
    index, model, bm25 = None, None, None
    if spec := metadata.get("index"):
        read = faiss.read_index_binary if spec["kind"].startswith("binary") else faiss.read_index
        faiss_index = read(str(index_dir / "index.faiss"))
        if "ef_search" in spec["params"]:
            faiss_index.hnsw.efSearch = spec["params"]["ef_search"]
        if "nprobe" in spec["params"]:
            faiss_index.nprobe = spec["params"]["nprobe"]
        ranges = None if metadata["ranges"] is None else np.asarray(metadata["ranges"], dtype=np.float32)
        rescore = np.load(index_dir / "rescore_int8.npy", mmap_mode="r") if metadata["rescore"] else None
        index = Index("deployed", faiss_index, spec["kind"], spec["dim"], ranges, rescore, spec["oversample"])
        if len(chunks) != faiss_index.ntotal:
            raise DeployError(f"{folder}: {len(chunks)} chunks but {faiss_index.ntotal} vectors; save it again.")
        model_dir = (index_dir / metadata["model"]).resolve()
        if metadata["onnx_file"]:
            model = load_onnx(model_dir, metadata["onnx_file"])
        else:  # the torch model (when the int8 ONNX model lost too much quality to be chosen)
            from sentence_transformers import SentenceTransformer

            model = SentenceTransformer(str(model_dir), device="cpu")
    if (index_dir / "bm25").is_dir():
        import bm25s

        retriever = bm25s.BM25.load(str(index_dir / "bm25"), show_progress=False)
        bm25 = (retriever, [c["_id"] for c in chunks])
        if retriever.scores["num_docs"] != len(chunks):
            raise DeployError(f"{folder}: {len(chunks)} chunks but a BM25 index of {retriever.scores['num_docs']}.")
    reranker = None
    if rerank := metadata.get("retriever", {}).get("rerank"):
        from embtune_utils import rerank as reranking

        reranker_dir = (index_dir / rerank["model"]).resolve()
        if not (reranker_dir / "config.json").is_file():
            raise DeployError(f"{folder}: its reranker {reranker_dir.name}/ is missing; re-run `embtune run` with the "
                              f"same --out, or copy {reranker_dir.name}/ back beside index/.")  # fmt: skip
        _check_files(reranker_dir, rerank.get("sha256", {}))
        reranker = reranking.load_reranker(str(reranker_dir), verbose=False)
    return Deployment(model, index, chunks, metadata, bm25, reranker)
