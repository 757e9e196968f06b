"""The build fails on a known vulnerability: the installed core packages, and what pyproject.toml and environment.yml
ask for, are at or above the safe floors in embtune_utils.versions (each floor names the advisory it clears)."""

from __future__ import annotations

import re
import tomllib

import pytest
import yaml
from packaging.version import Version

from embtune_utils import config, versions

ROOT = config.repo_root()
CORE = ("transformers", "torch", "sentence-transformers", "datasets", "openai")


def _lowest(spec: str) -> str | None:
    """The lowest version a requirement admits (its == or >= bound), or None."""
    match = re.search(r"(==|>=)\s*([0-9][^,;\s]*)", spec)
    return None if match is None else match[2].removesuffix("+cpu")


def _specs(lines: list[str]) -> dict[str, str]:
    return {re.split(r"[=<>!~ \[;]", s, maxsplit=1)[0].lower(): s for s in lines if not s.startswith("--")}


def test_every_core_package_has_a_floor_with_its_advisory_or_a_dated_none():
    floors = {f.package: f for f in versions.FLOORS}
    assert set(CORE) <= set(floors)
    assert Version(floors["transformers"].version) >= Version("5.10.0")
    assert "CVE-2026-4372" in floors["transformers"].advisories and "CVE-2026-9856" in floors["transformers"].advisories
    for floor in floors.values():
        assert "CVE-" in floor.advisories or f"no known advisory as of {versions.CHECKED}" in floor.advisories


@pytest.mark.parametrize("package", CORE)
def test_the_installed_package_is_at_or_above_its_safe_floor(package):
    found = versions.installed(package)
    assert found is not None, f"{package} is not installed: run `make setup`"
    assert versions.below_floor({package: found}) == []


@pytest.mark.parametrize("source", ["pyproject.toml", "environment.yml"])
def test_what_the_course_installs_is_at_or_above_every_floor(source):
    if source == "pyproject.toml":
        specs = _specs(tomllib.loads((ROOT / source).read_text())["project"]["dependencies"])
    else:
        env = yaml.safe_load((ROOT / source).read_text())
        specs = _specs(next(d["pip"] for d in env["dependencies"] if isinstance(d, dict)))
    for floor in versions.FLOORS:
        lowest = _lowest(specs[floor.package])
        assert lowest is not None, f"{source}: {specs[floor.package]} admits any version; give it a bound"
        assert Version(lowest) >= Version(floor.version), f"{source} admits {floor.package} {lowest} < {floor.version}"


def test_the_old_pins_fail_naming_both_advisories_and_the_fix():
    old = {"transformers": "4.57.6", "sentence-transformers": "5.7.0", "datasets": "5.0.1", "torch": "2.13.0"}
    problems = versions.below_floor(old)
    assert [p.split()[0] for p in problems] == ["transformers", "sentence-transformers", "datasets"]
    assert "CVE-2026-4372" in problems[0] and "CVE-2026-9856" in problems[0] and ">=5.10.0" in problems[0]


def test_a_torch_whose_weights_only_unpickler_corrupts_memory_fails():
    problems = versions.below_floor({"torch": "2.9.1"})
    assert len(problems) == 1 and "CVE-2026-24747" in problems[0] and "'torch>=2.10.0'" in problems[0]
    assert versions.below_floor({"torch": "2.10.0"}) == []
