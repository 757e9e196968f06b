"""Contrastive losses: InfoNCE from scratch, and the sentence-transformers losses the course compares."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

LOSSES = ("mnrl", "cached_mnrl", "triplet", "gist", "matryoshka")
MATRYOSHKA_DIMS = (384, 256, 128, 64)  # all-MiniLM-L6-v2 embeds in 384 dimensions; notebook 07 truncates to these
TRIPLET_MARGIN = 0.1  # on cosine distance, which lies in [0, 2] for any embeddings


class LossError(ValueError):
    """A loss was asked for with settings it cannot use; the message names the fix."""


def info_nce(query_emb: torch.Tensor, doc_emb: torch.Tensor, scale: float = 20.0) -> torch.Tensor:
    """InfoNCE over cosine similarities: query i's positive is doc i; every other doc in the batch is a negative.

    doc_emb holds the positives (one per query) first, then any hard negatives; scale = 1 / temperature.
    """
    if doc_emb.shape[0] < query_emb.shape[0]:
        raise LossError("info_nce needs at least one document per query: the positives come first in doc_emb.")
    logits = scale * F.normalize(query_emb, dim=-1) @ F.normalize(doc_emb, dim=-1).T  # (queries, docs)
    return F.cross_entropy(logits, torch.arange(query_emb.shape[0], device=query_emb.device))


def embed_columns(model: Any, columns: list[list[str]]) -> list[torch.Tensor]:
    """Embed each text column (anchors, positives, negatives...) the way sentence-transformers' losses do, with grad."""
    return [model(f)["sentence_embedding"] for f in features(model, columns)]


def info_nce_and_mnrl(model: Any, columns: list[list[str]], scale: float = 20.0) -> tuple[float, float]:
    """The same batch scored by info_nce and by MultipleNegativesRankingLoss: the two values should be equal."""
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    model.eval()  # no dropout, so both see the same embeddings
    with torch.no_grad():
        emb = embed_columns(model, columns)
        ours = info_nce(emb[0], torch.cat(emb[1:]), scale)
        theirs = MultipleNegativesRankingLoss(model, scale=scale).compute_loss_from_embeddings(emb, None)
    return float(ours), float(theirs)


def make_loss(
    name: str,
    model: Any,
    scale: float = 20.0,
    guide: Any = None,
    mini_batch_size: int = 16,
    dims: tuple[int, ...] = MATRYOSHKA_DIMS,
    gather: bool = False,
) -> Any:
    """One of LOSSES for `model`: mnrl, cached_mnrl (GradCache), triplet, gist (needs guide), matryoshka (of mnrl).

    gather=True (multi-GPU runs): the in-batch losses use every GPU's batch as negatives (`gather_across_devices`).
    """
    from sentence_transformers.sentence_transformer import losses as st_losses

    shared = {"gather_across_devices": True} if gather else {}
    if name == "mnrl":
        return st_losses.MultipleNegativesRankingLoss(model, scale=scale, **shared)
    if name == "cached_mnrl":
        return st_losses.CachedMultipleNegativesRankingLoss(
            model, scale=scale, mini_batch_size=mini_batch_size, **shared
        )
    if name == "triplet":
        return st_losses.TripletLoss(
            model, distance_metric=st_losses.TripletDistanceMetric.COSINE, triplet_margin=TRIPLET_MARGIN
        )
    if name == "gist":
        if guide is None:
            raise LossError("GISTEmbedLoss needs a guide model: pass guide=models.load_model() (the base model).")
        return st_losses.GISTEmbedLoss(model, guide=guide, temperature=1.0 / scale)
    if name == "matryoshka":
        if model.get_embedding_dimension() not in dims:
            raise LossError(f"Matryoshka dims {dims} must include the model's full dimension: add it to dims.")
        inner = st_losses.MultipleNegativesRankingLoss(model, scale=scale, **shared)
        return st_losses.MatryoshkaLoss(model, inner, list(dims))
    raise LossError(f"Unknown loss {name!r}: choose one of {', '.join(LOSSES)}.")


def features(model: Any, columns: list[list[str]]) -> list[dict[str, torch.Tensor]]:
    """Tokenized columns on the model's device: the input every sentence-transformers loss takes."""
    out = []
    for texts in columns:
        f = model.preprocess(texts)
        out.append({k: v.to(model.device) for k, v in f.items() if isinstance(v, torch.Tensor)})
    return out


def one_step(model: Any, loss: Any, columns: list[list[str]]) -> float:
    """One forward and backward pass of `loss` on a batch (gradients left on the parameters); returns the loss."""
    model.zero_grad(set_to_none=True)
    value = loss(features(model, columns), None)
    value.backward()
    return float(value.detach())
