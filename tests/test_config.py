from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from embtune_utils import config


def test_mode_comes_from_env_and_defaults_to_default(monkeypatch):
    monkeypatch.delenv("EMBTUNE_MODE", raising=False)
    assert config.get_mode() == "default"
    monkeypatch.setenv("EMBTUNE_MODE", " FAST ")
    assert config.get_mode() == "fast"
    assert config.settings().name == "fast"
    assert config.get_mode("full") == "full"


def test_fast_mode_is_smaller_than_default():
    fast, default = config.settings("fast"), config.settings("default")
    assert fast.max_articles is not None and default.max_articles is None
    assert fast.max_test_queries is not None and default.max_test_queries is None


def test_unknown_mode_names_the_choices(monkeypatch):
    monkeypatch.setenv("EMBTUNE_MODE", "turbo")
    with pytest.raises(config.ConfigError, match="'turbo' is not a mode: use one of fast, default, full"):
        config.get_mode()


def test_paths_resolve_to_the_repo_from_any_cwd(tmp_path, monkeypatch):
    monkeypatch.delenv("EMBTUNE_HOME", raising=False)
    root = config.repo_root()
    monkeypatch.chdir(tmp_path)
    assert config.repo_root() == root
    assert config.data_dir() == root / "data"
    assert config.artifacts_dir("fast") == root / "artifacts" / "fast"
    monkeypatch.chdir(root / "notebooks")
    assert config.repo_root() == root


def test_bad_embtune_home_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("EMBTUNE_HOME", str(tmp_path))
    with pytest.raises(config.ConfigError, match="point it at your clone"):
        config.repo_root()


def test_seed_makes_runs_repeatable():
    config.set_seed(7)
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    config.set_seed(7)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first


def test_device_and_precision_on_this_cpu_machine():
    if torch.cuda.is_available():
        pytest.skip("this test describes a machine without CUDA")
    assert config.detect_device() in {"cpu", "mps"}
    assert config.detect_precision("cpu") == "fp32"


@pytest.mark.parametrize(("bf16", "expected"), [(True, "bf16"), (False, "fp16")])
def test_precision_follows_the_gpu(monkeypatch, bf16, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    assert config.detect_precision("cuda") == expected


def test_describe_names_versions_and_hardware():
    info = config.describe()
    assert {"mode", "device", "precision", "torch", "sentence-transformers"} <= set(info)


def test_configure_cuda_turns_off_cudnn_attention_on_gpus_only(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.backends.cuda, "enable_cudnn_sdp", calls.append)
    config.configure_cuda("cpu")
    assert calls == []
    config.configure_cuda("cuda")
    assert calls == [False]


def test_peak_rss_is_this_processs_high_water_mark_in_megabytes():
    import re
    from pathlib import Path

    if not Path("/proc/self/status").is_file():
        pytest.skip("reads /proc (Linux)")
    block = bytearray(64 * 2**20)
    block[::4096] = b"x" * len(block[::4096])  # touch every page so that it is resident
    status = Path("/proc/self/status").read_text()
    rss_mb = int(re.search(r"VmRSS:\s+(\d+) kB", status)[1]) / 1024
    assert rss_mb >= 64 and config.peak_rss_mb() >= rss_mb  # the peak is at least what is resident now, in MB
    del block


def test_display_path_hides_the_machines_folders(tmp_path):
    import sysconfig
    from pathlib import Path

    site = Path(sysconfig.get_paths()["purelib"])
    assert config.display_path(site / "pkg" / "model") == "<packages>/pkg/model"
    assert config.display_path(config.repo_root() / "artifacts" / "x") == "artifacts/x"
    outside = tmp_path / "elsewhere" / "x.json"
    assert config.display_path(outside).startswith("<tmp>/") and config.display_path(outside).endswith(
        "elsewhere/x.json"
    )


def test_jax_never_preallocates_the_gpu_once_the_package_is_imported():
    import os

    import embtune_utils  # noqa: F401 - importing it sets the variable

    assert os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"


def test_the_docs_state_fast_modes_real_slice():
    """The README and the workshop guide say how many articles fast mode keeps: the number in config, not an old one."""
    root = Path(__file__).resolve().parents[1]
    n = config.settings("fast").max_articles
    assert f"a seeded {n} of the 98 articles" in (root / "README.md").read_text()
    assert f"It uses {n} of the 98 articles" in (root / "docs" / "workshop.md").read_text()
