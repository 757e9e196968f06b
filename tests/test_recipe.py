"""Notebook 05's recipe (its cells tagged "recipe") builds what `train.train_model` builds for `embtune run` and
`python -m embtune_utils.train`: the same training arguments, loss, evaluator and training rows, so the two cannot
drift apart. The tagged cells run for real here, on the bundled all-MiniLM-L6-v2 and a few pairs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from embtune_utils import config, data, evaluate, models, negatives, plots, train

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "05_training.ipynb"
PLACE = ("output_dir", "logging_dir")  # where a run writes: different folders on purpose
STATE = ("score_functions", "score_function_names", "csv_headers", "primary_metric")  # filled in by a first call


def recipe_cells() -> list[str]:
    """The source of the notebook's cells tagged "recipe", in order."""
    cells = json.loads(NOTEBOOK.read_text(encoding="utf-8"))["cells"]
    return ["".join(c["source"]) for c in cells if "recipe" in c.get("metadata", {}).get("tags", [])]


@pytest.fixture(scope="module")
def small_beir(model):
    """Six real COVID-QA articles: enough for a few training pairs and a dev split with questions."""
    beir, _ = data.covidqa_beir(data.load_covidqa()[:6], model.tokenizer)
    assert beir.qrels["dev"], "the small slice needs dev questions"
    return beir


def _args(args) -> dict:
    return {k: v for k, v in args.to_dict().items() if k not in PLACE}


def _evaluator(evaluator) -> dict:
    return {k: v for k, v in vars(evaluator).items() if k not in STATE}


def _loss(loss) -> list:
    """Class and settings of a loss and of the loss it wraps (Matryoshka wraps MNRL)."""
    out = [type(loss).__name__, {k: v for k, v in loss.get_config_dict().items() if k != "guide"}]
    if inner := getattr(loss, "loss", None):
        out += _loss(inner)
    return out


def test_the_notebook_has_a_recipe():
    cells = recipe_cells()
    source = "\n".join(cells)
    for call in ("InformationRetrievalEvaluator(", "SentenceTransformerTrainingArguments(", "MatryoshkaLoss(",
                 "SentenceTransformerTrainer(", "trainer.train("):  # fmt: skip
        assert call in source, f"notebook 05's recipe cells do not call {call}"
    assert "train.train_model" not in source, "the recipe must be on the page, not behind train.train_model"
    assert max(len(c.splitlines()) for c in cells) <= 30


def test_notebook_recipe_builds_what_train_model_builds(small_beir, tmp_path, monkeypatch):
    corpus = data.split_corpus(small_beir, "train")
    synthetic = [{"query": f"what does chunk {cid} say?", "chunk_id": cid} for cid in list(corpus)[:8]]
    monkeypatch.setattr(train.synth, "course_pairs", lambda beir, model: synthetic)
    settings = dataclasses.replace(config.settings("fast"), train_batch_size=4, max_train_pairs=12, eval_steps=1)
    monkeypatch.setattr(config, "settings", lambda mode=None: settings)

    # the package's side: train.train_model up to the Trainer (fit is replaced by a recorder)
    built = {}

    def record(model, loss, dataset, args, evaluator, **kwargs):
        built.update(loss=loss, dataset=dataset, args=args, evaluator=evaluator)
        return {"steps": 0}

    monkeypatch.setattr(train, "fit", record)
    monkeypatch.setattr(train, "probe_loss", lambda model, dataset: 0.0)
    train.train_model(small_beir, tmp_path / "package")

    # the notebook's side: its recipe cells, run for real (3 steps of 4 pairs, dev evaluated after each)
    page = {"config": config, "data": data, "evaluate": evaluate, "models": models, "negatives": negatives}
    page |= {"plots": plots, "train": train, "MODE": "fast", "settings": settings, "FINAL": train.FINAL}
    page |= {"BATCH": settings.train_batch_size, "beir": small_beir, "train_corpus": corpus}
    page["checkpoints"] = tmp_path / "notebook"
    for n, source in enumerate(recipe_cells()):
        exec(compile(source, f"05_training.ipynb[recipe {n}]", "exec"), page)

    assert _args(page["args"]) == _args(built["args"])
    assert _loss(page["loss"]) == _loss(built["loss"])
    assert _evaluator(page["dev"]) == _evaluator(built["evaluator"])
    assert page["train_ds"].to_list() == built["dataset"].to_list()

    trainer = page["trainer"]
    assert trainer.state.global_step == 3
    logged = {e["step"]: e[page["KEY"]] for e in trainer.state.log_history if page["KEY"] in e}
    per_query = page["dev_log"].scores
    assert sorted(per_query) == sorted(logged) == [1, 2, 3]
    for step, scores in per_query.items():  # the per-question log reproduces the Trainer's own dev metric
        assert set(scores) == set(page["dev"].queries_ids)
        assert sum(scores.values()) / len(scores) == pytest.approx(logged[step], abs=1e-9)
