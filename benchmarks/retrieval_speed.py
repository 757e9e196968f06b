"""Retrieval speed on the course data, measured in one run: FAISS flat vs BM25 vs NumPy, and encode throughput.

Prints absolute numbers and ratios (this machine is noisy: compare ratios from the same run, not times
across runs). Usage: `EMBTUNE_MODE=fast .venv/bin/python benchmarks/retrieval_speed.py`.
"""

from __future__ import annotations

import time

import numpy as np

from embtune_utils import config, data, evaluate, models


def best_of(fn, repeat: int = 3) -> float:
    """The fastest of `repeat` wall-clock timings of fn(), in seconds."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    model = models.load_model(verbose=False)
    beir = data.course_data(model.tokenizer)
    queries = beir.split_queries("test")
    texts = [queries[q] for q in queries]
    doc_emb = evaluate.corpus_embeddings(model, beir.corpus)
    query_emb = evaluate.encode(model, texts)
    index = evaluate.flat_index(doc_emb)
    bm25 = evaluate.bm25_index(beir.corpus)
    doc_ids = list(beir.corpus)

    sample = [beir.corpus[c]["text"] for c in doc_ids[:64]]
    t_encode = best_of(lambda: evaluate.encode(model, sample), repeat=2)
    t_faiss = best_of(lambda: evaluate.search_index(index, doc_ids, list(queries), query_emb, k=100))
    t_numpy = best_of(lambda: np.argsort(-(query_emb @ doc_emb.T), axis=1)[:, :100])
    t_bm25 = best_of(lambda: evaluate.bm25_search(bm25, queries, k=100))

    n = len(queries)
    print(f"mode={config.get_mode()} chunks={len(doc_ids)} queries={n} {config.describe()['device']}")
    print(f"encode passages/s      {len(sample) / t_encode:9.1f}")
    print(f"FAISS flat queries/s   {n / t_faiss:9.1f}")
    print(f"NumPy argsort queries/s{n / t_numpy:9.1f}")
    print(f"BM25 queries/s         {n / t_bm25:9.1f}")
    print(f"ratio FAISS/NumPy      {t_numpy / t_faiss:9.2f}x")
    print(f"ratio FAISS/BM25       {t_bm25 / t_faiss:9.2f}x")


if __name__ == "__main__":
    main()
