from __future__ import annotations

import json

import pytest
from fake_openai import FakeOpenAI, fake_queries

from embtune_utils import rag

CHUNKS = [{"title": "Paper A", "text": "MERS-CoV came from camels."}, {"title": "Paper B", "text": "Bats host SARS."}]


def test_prompt_numbers_the_evidence_and_ends_with_the_question():
    prompt = rag.build_rag_prompt("Where did MERS come from?", CHUNKS)
    assert prompt.index("[1] Paper A") < prompt.index("[2] Paper B") < prompt.index("Question: Where did MERS")
    assert rag.build_rag_prompt("q", CHUNKS, max_chars=10).count("[") == 1  # the first passage always fits


def test_no_key_says_what_to_do(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    assert not rag.llm_available()
    with pytest.raises(rag.MissingKeyError, match="OPENAI_API_KEY is not set: set it"):
        rag.openai_client()


def test_answer_goes_through_the_real_openai_client(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key")
    prompt = rag.build_rag_prompt("Where?", CHUNKS)
    with FakeOpenAI() as server:
        client = rag.openai_client(base_url=server.base_url)
        text = rag.answer(prompt, client, model="some-model")
    assert json.loads(text) == {"queries": fake_queries(prompt)}
    assert server.chat_actions == ["ok"] and server.auth_headers == ["Bearer sk-test-not-a-real-key"]
