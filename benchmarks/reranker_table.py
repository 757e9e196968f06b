"""Issue 23's reranker table, re-measured with the course's code: rerankers trained from all-MiniLM-L6-v2's weights on
the experts' questions alone or with the shipped synthetic ones, with each of rerank.LOSSES, reranking BM25's top k
(k chosen on dev), and the experts + synthetic, in-batch negatives one fused with BM25 by RRF (the issue's last
row). Dev and test NDCG@10 with 95% intervals, paired differences against BM25 on test. Writes
results/<mode>/reranker_table.json and prints a Markdown table.

    EMBTUNE_MODE=full python benchmarks/reranker_table.py        # a GPU: every question, 3 epochs, 256 tokens
    EMBTUNE_MODE=default python benchmarks/reranker_table.py     # 2 CPU cores: the mode's sample (slow: ~15 min)
"""

from __future__ import annotations

import time

import numpy as np

from embtune_utils import config, data, evaluate, models, rerank, train

SOURCES = {"experts only": "experts", "experts + synthetic": "both"}


def main() -> None:
    """Train each (source, loss) reranker, score it on dev and test, save and print the table."""
    config.set_seed()
    mode, settings = config.get_mode(), config.settings()
    base = models.load_model()
    beir = data.course_data(base.tokenizer)
    bm25 = evaluate.bm25_index(beir.corpus)
    split_q = {s: beir.split_queries(s) for s in ("dev", "test")}
    first = {s: evaluate.bm25_search(bm25, q) for s, q in split_q.items()}
    per_q = {s: {"bm25": evaluate.per_query_metrics(first[s], beir.qrels[s], ("ndcg@10",))} for s in split_q}
    rows = {"bm25": {"k": None, "seconds": 0.0, "questions": 0}}
    train_corpus = data.split_corpus(beir, "train")
    for label, source in SOURCES.items():
        pairs = train.sample_rows(train.training_pairs(beir, base, source), settings.rerank_questions)
        questions = rerank.questions_dataset(pairs, beir.corpus)
        for loss in rerank.LOSSES:
            name = f"{label}, {loss}"
            out = config.artifacts_dir() / "reranker-table" / name.replace(" ", "-").replace(",", "")
            started = time.perf_counter()
            model, info = rerank.train_reranker(questions, base, train_corpus, out, loss)
            scores = {s: rerank.candidate_scores(model, [first[s]], q, beir.corpus, max(settings.rerank_depths))
                      for s, q in split_q.items()}  # fmt: skip
            curve = rerank.sweep_depths(first["dev"], scores["dev"], beir.qrels["dev"], settings.rerank_depths)
            k = rerank.best_depth(curve)
            for s in split_q:
                run = rerank.reorder(first[s], scores[s], k)
                per_q[s][name] = evaluate.per_query_metrics(run, beir.qrels[s], ("ndcg@10",))
                if loss == rerank.LOSSES[0] and source == "both":  # the last row: reranked, then RRF
                    fused = evaluate.rrf([run, first[s]])
                    fused_q = evaluate.per_query_metrics(fused, beir.qrels[s], ("ndcg@10",))
                    per_q[s][f"{name}, then RRF with BM25"] = fused_q
            rows[name] = {"k": k, "seconds": time.perf_counter() - started, "questions": len(pairs), **info}
            if loss == rerank.LOSSES[0] and source == "both":
                rows[f"{name}, then RRF with BM25"] = rows[name]
            print(f"{name}: k = {k}, {rows[name]['seconds']:.0f} s", flush=True)
    table = {}
    for name, row in rows.items():
        cells = {s: evaluate.bootstrap_ci([v["ndcg@10"] for v in per_q[s][name].values()]) for s in split_q}
        test = np.array([per_q["test"][name][q]["ndcg@10"] for q in split_q["test"]])
        bm = np.array([per_q["test"]["bm25"][q]["ndcg@10"] for q in split_q["test"]])
        table[name] = row | {"dev": list(cells["dev"]), "test": list(cells["test"])}
        table[name]["minus_bm25"] = evaluate.paired_test(test, bm) if name != "bm25" else None
    budget = {k: getattr(settings, f"rerank_{k}") for k in ("questions", "negatives", "max_length", "epochs")}
    record = {"table": table, "budget": budget | {"depths": list(settings.rerank_depths)}}
    record |= {"n_dev_queries": len(split_q["dev"]), "n_test_queries": len(split_q["test"])}
    print("saved", evaluate.save_results("reranker_table", record).relative_to(config.repo_root()))
    print(f"\n{mode} mode, {config.describe().get('gpu', config.detect_device())}")
    print(rerank.table_markdown(record))


if __name__ == "__main__":
    main()
