"""A small fake OpenAI-compatible HTTP server on 127.0.0.1, for testing the real `openai` client.

It serves chat completions, file upload/download and the Batch API, and can be scripted to fail:
each chat request takes the next action from `server.chat_script` ("ok", "429", "500", "timeout",
"reset", "malformed", "empty"); batch lines whose custom_id is in `server.batch_fail_once` fail the first time;
`server.query_fn` makes the queries of a successful chat reply.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TIMEOUT_SLEEP_S = 3.0


def fake_queries(passage: str, n: int = 3) -> list[str]:
    """Deterministic 'generated' queries that name the passage's first word (so tests can map them back)."""
    first = re.findall(r"\w+", passage.split("Passage:")[-1])[0]
    return [f"What does the study say about {first} (question {i + 1})?" for i in range(n)]


def completion(content: str, model: str) -> dict:
    return {
        "id": "chatcmpl-x",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
    }


class Handler(BaseHTTPRequestHandler):
    server: FakeOpenAI
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _send(self, status: int, body: dict | str, headers: dict | None = None) -> None:
        data = (body if isinstance(body, str) else json.dumps(body)).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def do_POST(self):  # noqa: N802 - name fixed by http.server
        self.server.auth_headers.append(self.headers.get("Authorization"))
        if self.path.endswith("/chat/completions"):
            return self._chat(json.loads(self._body()))
        if self.path.endswith("/files"):
            return self._upload(self._body())
        if self.path.endswith("/batches"):
            return self._create_batch(json.loads(self._body()))
        self._send(404, {"error": {"message": "not found"}})

    def do_GET(self):  # noqa: N802
        if m := re.search(r"/batches/([\w-]+)$", self.path):
            return self._poll(m.group(1))
        if m := re.search(r"/files/([\w-]+)/content$", self.path):
            return self._send(200, self.server.files[m.group(1)])
        self._send(404, {"error": {"message": "not found"}})

    # chat ----------------------------------------------------------------
    def _chat(self, body: dict) -> None:
        action = self.server.chat_script.pop(0) if self.server.chat_script else "ok"
        self.server.chat_actions.append(action)
        passage = body["messages"][-1]["content"]
        if action == "429":
            return self._send(429, {"error": {"message": "Rate limit", "type": "rate_limit"}}, {"retry-after": "0.05"})
        if action == "500":
            return self._send(500, {"error": {"message": "boom", "type": "server_error"}})
        if action == "timeout":
            time.sleep(TIMEOUT_SLEEP_S)
            return self._send(200, completion(json.dumps({"queries": fake_queries(passage)}), body["model"]))
        if action == "reset":
            self.close_connection = True
            self.connection.shutdown(2)
            return None
        content = {"malformed": "Sure! Here are some thoughts about the passage.", "empty": ""}.get(
            action, json.dumps({"queries": self.server.query_fn(passage)})
        )
        return self._send(200, completion(content, body["model"]))

    # files and batches -------------------------------------------------------
    def _upload(self, raw: bytes) -> None:
        message = BytesParser().parsebytes(
            b"Content-Type: " + self.headers["Content-Type"].encode() + b"\r\n\r\n" + raw
        )
        content = next(p.get_payload(decode=True) for p in message.get_payload() if p.get_filename())
        file_id = f"file-{next(self.server.ids)}"
        self.server.files[file_id] = content.decode()
        self._send(
            200,
            {
                "id": file_id,
                "object": "file",
                "bytes": len(content),
                "created_at": 0,
                "filename": "requests.jsonl",
                "purpose": "batch",
                "status": "processed",
            },
        )

    def _create_batch(self, body: dict) -> None:
        batch_id = f"batch-{next(self.server.ids)}"
        self.server.batches[batch_id] = {"input": body["input_file_id"], "polls": 0}
        self.server.batches_created.append(batch_id)
        self._send(200, self._batch_obj(batch_id, "validating"))

    def _batch_obj(self, batch_id: str, status: str, output: str | None = None, error: str | None = None) -> dict:
        return {
            "id": batch_id,
            "object": "batch",
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
            "input_file_id": self.server.batches[batch_id]["input"],
            "status": status,
            "created_at": 0,
            "output_file_id": output,
            "error_file_id": error,
        }

    def _poll(self, batch_id: str) -> None:
        batch = self.server.batches[batch_id]
        batch["polls"] += 1
        if batch["polls"] < 2:
            return self._send(200, self._batch_obj(batch_id, "in_progress"))
        if "output" not in batch:
            out, err = [], []
            for line in self.server.files[batch["input"]].splitlines():
                request = json.loads(line)
                cid = request["custom_id"]
                self.server.batch_lines_seen.append(cid)
                if cid in self.server.batch_fail_once:
                    self.server.batch_fail_once.discard(cid)
                    err.append(
                        {
                            "id": "r",
                            "custom_id": cid,
                            "response": None,
                            "error": {"code": "server_error", "message": "failed"},
                        }
                    )
                    continue
                passage = request["body"]["messages"][-1]["content"]
                body = completion(json.dumps({"queries": fake_queries(passage)}), request["body"]["model"])
                out.append({"id": "r", "custom_id": cid, "response": {"status_code": 200, "body": body}, "error": None})
            batch["output"], batch["error"] = f"file-{next(self.server.ids)}", f"file-{next(self.server.ids)}"
            self.server.files[batch["output"]] = "".join(json.dumps(r) + "\n" for r in out)
            self.server.files[batch["error"]] = "".join(json.dumps(r) + "\n" for r in err)
        self._send(200, self._batch_obj(batch_id, "completed", batch["output"], batch["error"]))


class FakeOpenAI(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.chat_script: list[str] = []
        self.chat_actions: list[str] = []
        self.auth_headers: list[str | None] = []
        self.files: dict[str, str] = {}
        self.batches: dict[str, dict] = {}
        self.batches_created: list[str] = []
        self.batch_lines_seen: list[str] = []
        self.batch_fail_once: set[str] = set()
        self.query_fn = fake_queries  # passage prompt -> the queries a reply carries (a test may swap it)
        self.ids = itertools.count(1)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}/v1"

    def __enter__(self):
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.shutdown()
        self.server_close()
