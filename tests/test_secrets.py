"""No API key ever reaches a committed notebook output, a cache or a results file."""

from __future__ import annotations

import os
import re

from embtune_utils import config

KEY_PATTERN = re.compile(r"sk-[A-Za-z0-9_-]{16,}")


def scanned_files():
    """Executed notebooks (the course's and the GPU run's), shipped caches, results, and whatever runs left in
    artifacts/ (generation caches, mined rows, run records, reports)."""
    root = config.repo_root()
    yield from sorted((root / "notebooks").rglob("*.ipynb"))
    yield from sorted((root / "data").rglob("*.jsonl"))
    for suffix in ("*.json", "*.ipynb", "*.md", "*.log"):
        yield from sorted((root / "results").rglob(suffix))
    for suffix in ("*.json", "*.jsonl", "*.md"):
        yield from sorted((root / "artifacts").rglob(suffix))


def test_pre_commit_guards_keys_large_files_and_lint():
    import yaml

    hooks = {
        hook["id"]
        for repo in yaml.safe_load((config.repo_root() / ".pre-commit-config.yaml").read_text())["repos"]
        for hook in repo["hooks"]
    }
    assert {"detect-private-key", "check-added-large-files", "ruff", "ruff-format"} <= hooks


def test_no_key_like_strings_in_notebooks_caches_or_results():
    files = list(scanned_files())
    assert any(p.suffix == ".ipynb" for p in files) and any(p.suffix == ".jsonl" for p in files)
    key = os.environ.get("OPENAI_API_KEY", "")
    for path in files:
        text = path.read_text(encoding="utf-8")
        assert not KEY_PATTERN.search(text), f"key-like string in {path}"
        assert not key or key not in text, f"OPENAI_API_KEY's value is in {path}"


def test_the_scanner_finds_a_planted_key(tmp_path):
    assert KEY_PATTERN.search('{"text": "sk-proj-abcdefghijklmnop1234"}')
    assert not KEY_PATTERN.search("ask-me-anything risk-free")
