from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

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


class _FakeChat(BaseHTTPRequestHandler):
    """A fake OpenAI-compatible server: answers chat completions with the number of context passages."""

    def do_POST(self):  # noqa: N802 - name fixed by http.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append((self.path, self.headers.get("Authorization"), body))
        n = body["messages"][1]["content"].count("\n[")
        reply = {
            "id": "x",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [
                {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": f"{n} passages [1]"}}
            ],
        }
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_answer_goes_through_the_real_openai_client(monkeypatch):
    server = HTTPServer(("127.0.0.1", 0), _FakeChat)
    server.requests = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key")
        client = rag.openai_client(base_url=f"http://127.0.0.1:{server.server_port}/v1")
        text = rag.answer(rag.build_rag_prompt("Where?", CHUNKS), client, model="some-model")
    finally:
        server.shutdown()
    assert text == "2 passages [1]"
    path, auth, body = server.requests[0]
    assert path == "/v1/chat/completions" and auth == "Bearer sk-test-not-a-real-key"
    assert body["model"] == "some-model" and body["messages"][0]["role"] == "system"
