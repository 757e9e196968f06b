"""The reranker's plumbing: reordering a first stage's top k, the depth choice, scoring each pair once, the artifact
that serves a reranked retriever, and notebook 06b's recipe matching the package's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from embtune_utils import cli, config, deploy, evaluate, pipeline, rerank

ROOT = Path(__file__).resolve().parents[1]
CORPUS = {
    "d0": {"title": "", "text": "MERS-CoV has an incubation period of about five days."},
    "d1": {"title": "", "text": "Bats are a natural reservoir of many coronaviruses."},
    "d2": {"title": "", "text": "Hand washing lowers the spread of respiratory viruses."},
    "d3": {"title": "", "text": "Camels can carry MERS coronavirus and pass it to people."},
}


class CountingModel:
    """Scores a pair by the length of its passage; counts the pairs it was asked about."""

    def __init__(self) -> None:
        self.pairs: list[tuple[str, str]] = []

    def predict(self, pairs, batch_size=32, show_progress_bar=False, activation_fn=None):
        self.pairs += [tuple(p) for p in pairs]
        return [float(len(p[1])) for p in pairs]


def test_reorder_reranks_the_top_k_and_keeps_the_rest_below():
    run = {"q": [("a", 9.0), ("b", 8.0), ("c", 7.0), ("d", 6.0)]}
    scores = {"q": {"a": 0.1, "b": 0.9, "c": 0.5}}
    out = rerank.reorder(run, scores, k=3)["q"]
    assert [d for d, _ in out] == ["b", "c", "a", "d"]
    assert all(x[1] > y[1] for x, y in zip(out, out[1:])), "the reranked list is not sorted by score"
    assert [d for d, _ in rerank.reorder(run, scores, k=1)["q"]] == ["a", "b", "c", "d"]
    with pytest.raises(rerank.RerankError, match="score a deeper top-k"):
        rerank.reorder(run, scores, k=4)


def test_best_depth_takes_the_best_mean_and_the_smaller_of_equals():
    assert rerank.best_depth({5: (0.40, 0, 1), 10: (0.45, 0, 1), 20: (0.44, 0, 1)}) == 10
    assert rerank.best_depth({5: (0.4501, 0, 1), 10: (0.4504, 0, 1)}) == 5


def test_candidate_scores_scores_each_pair_once_across_first_stages():
    model = CountingModel()
    queries = {"q": "camels"}
    a = {"q": [("d3", 1.0), ("d0", 0.5), ("d1", 0.1)]}
    b = {"q": [("d0", 1.0), ("d2", 0.5), ("d3", 0.1)]}
    scores = rerank.candidate_scores(model, [a, b], queries, CORPUS, depth=2)
    assert set(scores["q"]) == {"d3", "d0", "d2"} and len(model.pairs) == 3
    assert scores["q"]["d3"] == len(CORPUS["d3"]["text"])


def test_the_choice_includes_the_reranked_retrievers_after_the_others():
    assert pipeline.choose({"bm25": 0.5, "hybrid weighted": 0.55, "bm25 + rerank": 0.6}) == "bm25 + rerank"
    assert pipeline.choose({"hybrid weighted": 0.6, "hybrid weighted + rerank": 0.6001}) == "hybrid weighted"
    assert pipeline.SERVES["hybrid weighted + rerank"] == "hybrid weighted"
    assert pipeline.SERVES["bm25 + rerank"] == "bm25"


def test_rerank_flag_defaults_to_gpu_only(monkeypatch):
    args = cli.parser().parse_args(["run", "--corpus", "c", "--out", "o"])
    assert args.rerank is None
    assert cli.parser().parse_args(["run", "--corpus", "c", "--out", "o", "--rerank"]).rerank is True
    assert cli.parser().parse_args(["run", "--corpus", "c", "--out", "o", "--no-rerank"]).rerank is False
    monkeypatch.setattr(config, "detect_device", lambda: "cpu")
    assert not pipeline.RunConfig("c", "o").reranks() and pipeline.RunConfig("c", "o", rerank=True).reranks()
    monkeypatch.setattr(config, "detect_device", lambda: "cuda")
    assert pipeline.RunConfig("c", "o").reranks() and not pipeline.RunConfig("c", "o", rerank=False).reranks()


def test_a_reranked_bm25_artifact_serves_the_reranked_run(tmp_path, capsys):
    model = rerank.load_reranker(verbose=False)  # untrained head: any scores will do, the order must follow them
    model.save(str(tmp_path / "reranker"))
    spec = {"model": "../reranker", "k": 3}
    deploy.save_index(tmp_path, CORPUS, None, {}, {"config": "bm25"}, served="bm25", rerank=spec)
    deployed = deploy.load_artifact(tmp_path)
    queries = {"q": "MERS coronavirus camels incubation"}
    first = evaluate.bm25_search(evaluate.bm25_index(CORPUS), queries, k=3)
    scores = rerank.candidate_scores(deployed.reranker, [first], queries, CORPUS, 3)
    expected = [d for d, _ in rerank.reorder(first, scores, 3)["q"]]
    assert [d for d, _ in deployed.run(queries, k=3)["q"]] == expected
    saved = json.loads((tmp_path / "index" / "metadata.json").read_text())["retriever"]["rerank"]
    assert {k: saved[k] for k in spec} == spec and "model.safetensors" in saved["sha256"]  # its files are checked
    assert cli.main(["search", queries["q"], "--artifact", str(tmp_path), "-k", "2"]) == 0
    assert "reranker score (top 3 of BM25" in capsys.readouterr().out
    weights = tmp_path / "reranker" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8])  # a half-copied reranker
    with pytest.raises(deploy.DeployError, match="does not match the checksum"):
        deploy.load_artifact(tmp_path)
    import shutil

    shutil.rmtree(tmp_path / "reranker")
    with pytest.raises(deploy.DeployError, match="reranker reranker/ is missing"):
        deploy.load_artifact(tmp_path)


def test_notebook_recipe_is_the_package_recipe():
    """Notebook 06b's cells tagged "recipe" call mine_hard_negatives and the trainer with the package's values."""
    import nbformat

    nb = nbformat.read(ROOT / "notebooks" / "06b_reranking.ipynb", as_version=4)
    recipe = "\n".join(c.source for c in nb.cells if "recipe" in c.metadata.get("tags", []))
    for key, value in rerank.MINING.items():
        assert f"{key}={json.dumps(value)}" in recipe, f"notebook 06b mines with a different {key} than rerank.MINING"
    expected = ["learning_rate=settings.rerank_learning_rate", "num_negatives=rerank.IN_BATCH_NEGATIVES"]
    expected += ["warmup_steps=0.1", "num_train_epochs=settings.rerank_epochs", "range_min=0", "use_faiss=True"]
    expected += ["per_device_train_batch_size=settings.rerank_batch_size", "**rerank.plumbing_args()"]
    for text in expected:
        assert text in recipe, f"notebook 06b's recipe lacks {text}"
    assert rerank.mining_args()["range_min"] == 0 and rerank.training_args(Path("x")).warmup_steps == 0.1
