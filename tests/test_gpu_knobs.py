"""The T4-emulation knobs (issue 21): EMBTUNE_PRECISION and EMBTUNE_GPU_MEMORY_GB, checked on a CPU machine with
torch.cuda's functions replaced."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from embtune_utils import config, train

T4_BYTES = 15_828_320_256  # what torch reports as a T4's total memory
H200_BYTES = 150_109_880_320


@pytest.fixture
def fake_gpus(monkeypatch):
    """Two fake GPUs of H200 size; records set_per_process_memory_fraction calls; forgets any earlier cap."""
    calls = []
    monkeypatch.setattr(config, "_gpu_memory_cap", {})
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: SimpleNamespace(total_memory=H200_BYTES))
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, i=None: calls.append((f, i)))
    monkeypatch.setattr(torch.backends.cuda, "enable_cudnn_sdp", lambda on: None)
    monkeypatch.delenv("EMBTUNE_GPU_MEMORY_GB", raising=False)
    return calls


@pytest.mark.parametrize("value", ["fp16", "bf16", "fp32", " FP16 "])
def test_precision_override_wins_on_every_device(monkeypatch, value):
    monkeypatch.setenv("EMBTUNE_PRECISION", value)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    for device in ("cuda", "cpu"):
        assert config.detect_precision(device) == value.strip().lower()
    flags = train.precision_flags()
    assert flags == {"bf16": value.strip().lower() == "bf16", "fp16": value.strip().lower() == "fp16"}


def test_no_override_keeps_the_hardware_choice(monkeypatch):
    monkeypatch.delenv("EMBTUNE_PRECISION", raising=False)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert config.precision_override() is None
    assert config.detect_precision("cuda") == "bf16"
    assert config.detect_precision("cpu") == "fp32"


def test_emulated_bf16_counts_as_missing(monkeypatch):
    """A T4 makes bf16 tensors by emulation (torch's default check says yes) but has no bf16 tensor cores: fp16."""
    monkeypatch.delenv("EMBTUNE_PRECISION", raising=False)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert config.detect_precision("cuda") == "fp16"


@pytest.mark.parametrize("value", ["fp8", "half", "16"])
def test_bad_precision_names_the_choices_and_the_fix(monkeypatch, value):
    monkeypatch.setenv("EMBTUNE_PRECISION", value)
    with pytest.raises(config.ConfigError, match=f"EMBTUNE_PRECISION='{value}' is not a precision: use one of fp32"):
        config.detect_precision("cuda")
    with pytest.raises(config.ConfigError, match="or unset it"):
        config.describe()


def test_describe_says_what_was_forced(monkeypatch):
    monkeypatch.setenv("EMBTUNE_PRECISION", "fp16")
    info = config.describe()
    assert info["precision"] == "fp16" and info["precision_set_by"] == "EMBTUNE_PRECISION"
    monkeypatch.delenv("EMBTUNE_PRECISION")
    assert "precision_set_by" not in config.describe()


@pytest.mark.parametrize(
    ("gb", "total", "expected"),
    [(15, H200_BYTES, 15e9 / H200_BYTES), (15, T4_BYTES, 15e9 / T4_BYTES), (200, H200_BYTES, 1.0)],
)
def test_memory_fraction(gb, total, expected):
    assert config.memory_fraction(gb, total) == pytest.approx(expected)
    assert config.memory_fraction(15, H200_BYTES) == pytest.approx(0.0999, abs=1e-4)  # a tenth of an H200


def test_configure_cuda_caps_every_gpu_once(monkeypatch, fake_gpus):
    monkeypatch.setenv("EMBTUNE_GPU_MEMORY_GB", "15")
    config.configure_cuda("cuda")
    assert fake_gpus == [(pytest.approx(15e9 / H200_BYTES), 0), (pytest.approx(15e9 / H200_BYTES), 1)]
    assert config.cap_gpu_memory() == {"gb": 15.0, "fraction": 0.0999, "total_gb": 150.1}
    monkeypatch.setenv("EMBTUNE_GPU_MEMORY_GB", "40")  # once per process: a later load_model changes nothing
    config.configure_cuda("cuda")
    assert len(fake_gpus) == 2


def test_no_cap_without_the_variable_or_on_cpu(monkeypatch, fake_gpus):
    config.configure_cuda("cuda")
    monkeypatch.setenv("EMBTUNE_GPU_MEMORY_GB", "15")
    config.configure_cuda("cpu")
    assert fake_gpus == [] and config._gpu_memory_cap == {}


@pytest.mark.parametrize("value", ["0", "-3", "lots", "inf", "nan"])
def test_bad_memory_cap_says_what_to_do(monkeypatch, fake_gpus, value):
    monkeypatch.setenv("EMBTUNE_GPU_MEMORY_GB", value)
    with pytest.raises(
        config.ConfigError, match=r"is not a positive number of GB: for example `EMBTUNE_GPU_MEMORY_GB=15`"
    ):
        config.configure_cuda("cuda")
    assert fake_gpus == []
