"""Deployment speed, memory and quality, measured in one run on this machine; prints ratios (notebook 07's targets).

1. ONNX int8 vs torch fp32: encode throughput on the same chunks (taking turns, best of 3) and NDCG@10 retained.
2. int8 and binary indexes with rescoring vs float exact search on the course corpus: quality, bytes, speed.
3. The same indexes at scale (--scale vectors: the course's real embeddings tiled with small noise, re-normalised):
   search speed and memory only, since synthetic vectors have no relevance labels.

Usage: `EMBTUNE_MODE=fast .venv/bin/python benchmarks/deploy.py [--scale 200000]`. Compare ratios from one run,
not times across runs (these machines are noisy). Needs notebook 05's model (it trains one if missing).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from embtune_utils import config, data, deploy, evaluate, models, train

TARGETS = {"onnx_speedup": 2.5, "onnx_quality": 99.0, "binary_quality": 96.0, "int8_quality": 99.0}


def ndcg(index: deploy.Index, query_emb: np.ndarray, doc_ids: list[str], qrels: evaluate.Qrels) -> float:
    """Mean NDCG@10 of an index's top 10 over the test questions."""
    run = deploy.search_run(index, doc_ids, list(qrels), query_emb)
    return evaluate.evaluate_run(run, qrels, ("ndcg@10",))["ndcg@10"]


def scaled(doc_emb: np.ndarray, n: int, noise: float = 0.05, seed: int = config.SEED) -> np.ndarray:
    """`n` unit vectors: the real embeddings tiled, each copy moved by Gaussian noise and re-normalised."""
    rng = np.random.default_rng(seed)
    tiled = doc_emb[rng.integers(0, len(doc_emb), n)] + noise * rng.standard_normal((n, doc_emb.shape[1]))
    return deploy.truncate(tiled.astype(np.float32), doc_emb.shape[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=200_000, help="vectors in the at-scale search test")
    parser.add_argument("--encode-texts", type=int, default=128, help="chunks in the encode-throughput test")
    args = parser.parse_args()

    base = models.load_model(verbose=False)
    beir = data.course_data(base.tokenizer)
    finetuned = train.course_model(beir)
    qrels = beir.qrels["test"]
    test_q = beir.split_queries("test")
    questions = [test_q[q] for q in qrels]
    doc_ids, texts = evaluate.doc_texts(beir.corpus)
    onnx_model = deploy.load_onnx(train.finetuned_path(), deploy.export_onnx_int8(train.finetuned_path()))
    m = config.describe()
    print(f"mode={m['mode']} {m['device']} {m['cpu_count']} cores, torch {m['torch']}, onnx {deploy.onnx_config()}")
    print(f"corpus {len(doc_ids)} chunks, {len(questions)} test questions\n")

    speed = deploy.encode_speed({"torch fp32": finetuned, "onnx int8": onnx_model}, texts[: args.encode_texts], 3)
    docs, queries = evaluate.corpus_embeddings(finetuned, beir.corpus), evaluate.encode(finetuned, questions)
    onnx_docs = evaluate.corpus_embeddings(onnx_model, beir.corpus)
    onnx_queries = evaluate.encode(onnx_model, questions)
    fp32 = ndcg(deploy.build_index(docs), queries, doc_ids, qrels)
    onnx = ndcg(deploy.build_index(onnx_docs), onnx_queries, doc_ids, qrels)
    speedup, onnx_pct = speed["onnx int8"] / speed["torch fp32"], 100 * onnx / fp32
    print("1. encoder (passages/s on the same chunks)")
    print(f"   torch fp32 {speed['torch fp32']:.1f}   onnx int8 {speed['onnx int8']:.1f}   ratio {speedup:.2f}x")
    print(f"   NDCG@10 torch fp32 {fp32:.4f}   onnx int8 {onnx:.4f}   retained {onnx_pct:.1f}%\n")

    print("2. indexes on the course corpus (query already embedded)")
    flat = deploy.build_index(docs)
    flat_speed = deploy.search_speed(flat, queries)
    results = {}
    for kind in ("int8", "binary"):
        index = deploy.build_index(docs, kind, rescore=True)
        s = deploy.search_speed(index, queries)
        q = ndcg(index, queries, doc_ids, qrels)
        results[kind] = 100 * q / fp32
        print(
            f"   {kind:>6} + rescore: NDCG@10 {q:.4f} ({100 * q / fp32:.1f}% of float), "
            f"index {flat.nbytes() / index.nbytes():.1f}x smaller, "
            f"batch speed {s['queries_per_s'] / flat_speed['queries_per_s']:.2f}x, "
            f"p50 single-query {flat_speed['p50_ms'] / s['p50_ms']:.2f}x of float flat"
        )

    print(f"\n3. at scale: {args.scale:,} vectors (real embeddings tiled with noise; speed and memory only)")
    big = scaled(docs, args.scale)
    big_flat = deploy.build_index(big)
    big_flat_speed = deploy.search_speed(big_flat, queries, max_single=50)
    exact = big_flat.search(queries, 10)[1]
    for kind in ("int8", "binary"):
        start = time.perf_counter()
        index = deploy.build_index(big, kind, rescore=True)
        build_s = time.perf_counter() - start
        s = deploy.search_speed(index, queries, max_single=50)
        found = index.search(queries, 10)[1]
        overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, exact)])
        print(
            f"   {kind:>6} + rescore: index {big_flat.nbytes() / index.nbytes():.1f}x smaller "
            f"({deploy.human_bytes(index.nbytes())} vs {deploy.human_bytes(big_flat.nbytes())}), "
            f"batch speed {s['queries_per_s'] / big_flat_speed['queries_per_s']:.2f}x, "
            f"p50 single-query {big_flat_speed['p50_ms'] / s['p50_ms']:.2f}x, "
            f"recall of the exact top 10 {overlap:.3f}, built in {build_s:.1f} s"
        )

    print("\ntargets")
    checks = {
        f"ONNX int8 encode >= {TARGETS['onnx_speedup']}x torch fp32": (speedup >= TARGETS["onnx_speedup"], speedup),
        f"ONNX int8 keeps >= {TARGETS['onnx_quality']}% NDCG@10": (onnx_pct >= TARGETS["onnx_quality"], onnx_pct),
        f"binary + rescore >= {TARGETS['binary_quality']}%": (results["binary"] >= TARGETS["binary_quality"],
                                                             results["binary"]),
        f"int8 + rescore >= {TARGETS['int8_quality']}%": (results["int8"] >= TARGETS["int8_quality"], results["int8"]),
    }  # fmt: skip
    for name, (held, value) in checks.items():
        print(f"   {'holds ' if held else 'MISSED'} {name}: {value:.2f}")


if __name__ == "__main__":
    main()
