"""The generation half of RAG: a prompt built from retrieved chunks, answered by an OpenAI-compatible model."""

from __future__ import annotations

import os
from typing import Any

from embtune_utils import config

SYSTEM_PROMPT = (
    "You answer questions about scientific articles. Use only the numbered context passages. "
    "Cite the passages you use as [1], [2]. If the context does not contain the answer, say so."
)


class MissingKeyError(RuntimeError):
    """No API key is set for a step that calls an LLM."""


def build_rag_prompt(question: str, chunks: list[dict[str, Any]], max_chars: int = 6000) -> str:
    """A user prompt: numbered context passages (title + text), then the question; stops at `max_chars`."""
    parts, used = [], 0
    for n, chunk in enumerate(chunks, 1):
        passage = f"[{n}] {chunk.get('title', '')}\n{chunk['text'].strip()}\n"
        if parts and used + len(passage) > max_chars:
            break
        parts.append(passage)
        used += len(passage)
    return "Context:\n" + "\n".join(parts) + f"\nQuestion: {question.strip()}\nAnswer:"


def openai_client(base_url: str | None = None) -> Any:
    """An `openai.OpenAI` client; the key comes from OPENAI_API_KEY only and is never printed."""
    from openai import OpenAI

    base_url = base_url or os.environ.get("OPENAI_BASE_URL")
    if base_url is not None and not base_url.startswith(("http://", "https://")):
        raise config.ConfigError(
            f"the base URL {base_url!r} (--base-url or OPENAI_BASE_URL) has no http:// or https://: write it whole, "
            "e.g. http://localhost:8000/v1."
        )
    key = os.environ.get("OPENAI_API_KEY")
    if not key and base_url is None:
        raise MissingKeyError(
            "OPENAI_API_KEY is not set: set it (or OPENAI_BASE_URL for a local OpenAI-compatible server) "
            "to generate answers; without it the notebook shows the prompt and the retrieved evidence."
        )
    return OpenAI(api_key=key or "not-needed-for-local-servers", base_url=base_url)


def answer(prompt: str, client: Any, model: str = config.OPENAI_MODEL, max_tokens: int = 300) -> str:
    """Ask a chat model to answer a RAG prompt; returns the text of its reply."""
    response = client.chat.completions.create(
        model=model,
        messages=[{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt}],
        max_tokens=max_tokens,
        temperature=0,
    )
    return response.choices[0].message.content or ""


def llm_available() -> bool:
    """True when an API key or an OpenAI-compatible base URL is configured."""
    return bool(os.environ.get("OPENAI_API_KEY") or os.environ.get("OPENAI_BASE_URL"))
