"""Same seed and mode, same numbers: two fresh processes (different hash seeds, empty artifact folders) build the
fast-mode course data, mine negatives and score the base model, and agree on splits, negatives and metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from embtune_utils import config

SCRIPT = textwrap.dedent("""
    import json
    from embtune_utils import config, data, evaluate, models, negatives, train
    config.set_seed()
    model = models.load_model(device="cpu", verbose=False)
    beir = data.course_data(model.tokenizer, mode="fast")
    def first_articles(split, n=4):  # a few articles per split keep the test short; enough to differ if unseeded
        chunks = data.split_corpus(beir, split)
        keep = sorted({c["metadata"]["doc_id"] for c in chunks.values()})[:n]
        return {cid: c for cid, c in chunks.items() if c["metadata"]["doc_id"] in keep}
    train_chunks, test_chunks = first_articles("train"), first_articles("test")
    pairs = [p for p in data.expert_pairs(beir, "train") if p["chunk_id"] in train_chunks]
    mined = negatives.recipe_negatives(pairs, model, train_chunks)
    qrels = {q: r for q, r in beir.qrels["test"].items() if set(r) <= set(test_chunks)}
    run = evaluate.dense_run(model, test_chunks, {q: beir.queries[q] for q in qrels}, cache=False)
    metrics = evaluate.evaluate_run(run, qrels)
    print(json.dumps({"split": data.doc_split(beir), "chunks": sorted(beir.corpus), "negatives": mined,
                      "metrics": metrics}))
""")


def run_once(home, hash_seed: str) -> dict:
    """The script in a fresh process with its own empty artifacts/ (EMBTUNE_HOME) and PYTHONHASHSEED."""
    (home / "embtune_utils").mkdir(parents=True)
    (home / "data").symlink_to(config.data_dir())
    env = os.environ | {"EMBTUNE_HOME": str(home), "EMBTUNE_MODE": "fast", "PYTHONHASHSEED": hash_seed}
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_same_seed_and_mode_give_the_same_splits_negatives_and_metrics(tmp_path):
    first, second = run_once(tmp_path / "a", "1"), run_once(tmp_path / "b", "2")
    assert first["split"] == second["split"] and first["chunks"] == second["chunks"]
    assert len(first["negatives"]) > 10 and first["negatives"] == second["negatives"]
    assert first["metrics"].keys() == second["metrics"].keys()
    for name, value in first["metrics"].items():
        assert abs(value - second["metrics"][name]) <= 1e-6, name
    assert 0.2 < first["metrics"]["ndcg@10"] < 1.0  # a real score, not an empty run
