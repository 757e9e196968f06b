from __future__ import annotations

import math

import pytest
import torch
from sentence_transformers.sentence_transformer import losses as st_losses

from embtune_utils import losses


def test_info_nce_by_hand():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    d = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, -1.0]])  # two positives, then one hard negative
    c = 1 / math.sqrt(2)
    row0 = -math.log(math.exp(2 * 1) / (math.exp(2 * 1) + math.exp(2 * c) + math.exp(0)))
    row1 = -math.log(math.exp(2 * c) / (math.exp(0) + math.exp(2 * c) + math.exp(-2)))
    assert losses.info_nce(q, d, scale=2.0).item() == pytest.approx((row0 + row1) / 2, rel=1e-6)


def test_info_nce_lower_when_positives_are_closer():
    q = torch.eye(4)
    assert losses.info_nce(q, q.clone()) < losses.info_nce(q, q.roll(1, dims=0))


def test_info_nce_needs_a_document_per_query():
    with pytest.raises(losses.LossError, match="positives come first"):
        losses.info_nce(torch.eye(3), torch.eye(3)[:2])


@pytest.mark.parametrize("scale", [5.0, 20.0, 50.0])
def test_info_nce_equals_mnrl(model, tiny_beir, scale):
    texts = [c["text"] for c in list(tiny_beir.corpus.values())[:9]]
    columns = [["what binds the receptor?", "how is it spread?", "who was tested?"], texts[:3], texts[3:6], texts[6:9]]
    ours, theirs = losses.info_nce_and_mnrl(model, columns, scale)
    assert ours == pytest.approx(theirs, abs=1e-6)
    assert ours > 0


def test_make_loss_builds_each_loss(model):
    assert isinstance(losses.make_loss("mnrl", model, scale=10), st_losses.MultipleNegativesRankingLoss)
    cached = losses.make_loss("cached_mnrl", model, mini_batch_size=4)
    assert isinstance(cached, st_losses.CachedMultipleNegativesRankingLoss) and cached.mini_batch_size == 4
    assert isinstance(losses.make_loss("triplet", model), st_losses.TripletLoss)
    assert isinstance(losses.make_loss("gist", model, guide=model), st_losses.GISTEmbedLoss)
    assert isinstance(losses.make_loss("matryoshka", model), st_losses.MatryoshkaLoss)


def test_make_loss_errors_name_the_fix(model):
    with pytest.raises(losses.LossError, match="guide"):
        losses.make_loss("gist", model)
    with pytest.raises(losses.LossError, match="add it to dims"):
        losses.make_loss("matryoshka", model, dims=(128, 64))
    with pytest.raises(losses.LossError, match="choose one of"):
        losses.make_loss("contrastive", model)


def test_gather_shares_negatives_across_gpus_only_when_asked(model):
    assert losses.make_loss("mnrl", model).gather_across_devices is False
    assert losses.make_loss("mnrl", model, gather=True).gather_across_devices is True
    assert losses.make_loss("matryoshka", model, gather=True).loss.gather_across_devices is True
