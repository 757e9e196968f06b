from __future__ import annotations

import numpy as np
import pytest
import torch

from embtune_utils import data, models, negatives, train


def test_training_pairs_sources(tiny_beir, model, monkeypatch):
    monkeypatch.setattr(train.synth, "course_pairs", lambda beir, m: [{"query": "s", "chunk_id": "x"}])
    experts = train.training_pairs(tiny_beir, model, "experts")
    assert experts == data.expert_pairs(tiny_beir, "train") and all("answer" in p for p in experts)
    assert train.training_pairs(tiny_beir, model, "synthetic") == [{"query": "s", "chunk_id": "x"}]
    assert len(train.training_pairs(tiny_beir, model, "both")) == len(experts) + 1
    with pytest.raises(train.TrainError, match="choose one of"):
        train.training_pairs(tiny_beir, model, "wiki")


def test_precision_flags():
    assert train.precision_flags("bf16") == {"bf16": True, "fp16": False}
    assert train.precision_flags("fp16") == {"bf16": False, "fp16": True}
    assert train.precision_flags("fp32") == {"bf16": False, "fp16": False}


def test_training_args_defaults(tmp_path):
    args = train.training_args(tmp_path, batch_size=8, learning_rate=1e-4, max_steps=3)
    assert args.per_device_train_batch_size == 8 and args.max_steps == 3
    assert args.batch_sampler == "no_duplicates" and not args.fp16 and not args.bf16  # CPU here
    with pytest.raises(train.TrainError, match="at least 2"):
        train.training_args(tmp_path, batch_size=1)


def test_track_resources_sees_time_and_memory():
    with train.track_resources(device="cpu") as usage:
        block = np.ones(64 * 2**20 // 8)  # 64 MiB
        block.sum()
    assert usage.peak_mb > 40 and usage.seconds > 0 and "resident" in usage.memory
    del block


def test_short_run_trains_and_reports(tiny_beir, tmp_path):
    model = models.load_model(verbose=False)
    rows = negatives.bm25_negatives(data.expert_pairs(tiny_beir, "train")[:8], tiny_beir.corpus, n=1)
    dataset = negatives.to_dataset(rows, tiny_beir.corpus)
    before = [p.detach().clone() for p in model.parameters()]
    args = train.training_args(tmp_path, batch_size=4, learning_rate=1e-4)
    result = train.short_run(model, _mnrl(model), dataset, args)
    assert result["steps"] == 2 and len(result["losses"]) == 2 and all(np.isfinite(result["losses"]))
    assert result["seconds"] > 0 and result["peak_mb"] >= 0
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    with pytest.raises(train.TrainError, match="less than one batch"):
        train.short_run(model, _mnrl(model), dataset.select(range(3)), args)


def _mnrl(model):
    from embtune_utils import losses

    return losses.make_loss("mnrl", model)


def test_dev_scores_per_query(tiny_beir, model):
    scores = train.dev_scores(model, tiny_beir, split="test")
    assert set(scores) == set(tiny_beir.qrels["test"]) and all(0 <= s <= 1 for s in scores.values())


def test_course_negatives_mined_once_then_read(tiny_beir, model, home, monkeypatch):
    pairs = data.expert_pairs(tiny_beir, "train")[:6]
    monkeypatch.setattr(train, "training_pairs", lambda beir, m, source: pairs)
    first = train.course_negatives(tiny_beir, model, "experts")
    assert (home / "artifacts").exists() and negatives.load_rows(negatives.recipe_name("experts")) == first
    monkeypatch.setattr(negatives, "recipe_negatives", lambda *a: pytest.fail("mined again"))
    assert train.course_negatives(tiny_beir, model, "experts") == first
