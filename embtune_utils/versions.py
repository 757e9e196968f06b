"""Safe versions: the lowest release of each core dependency the course accepts, with the advisory that floor clears.

`pip-audit` is the full check where its advisory database can be reached; this table is the part that works offline
(tests/test_safe_versions.py and the setup doctor hold the installed packages to it)."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata

from packaging.version import Version

CHECKED = "2026-12-08"  # when the advisories below were last read


@dataclass(frozen=True)
class Floor:
    """A package's lowest accepted version and why: the advisories it clears, or that none was known."""

    package: str
    version: str
    advisories: str


FLOORS = (
    Floor(
        "transformers",
        "5.10.0",
        "CVE-2026-4372 (GHSA-29pf-2h5f-8g72, critical: a config.json can make from_pretrained run Hub code without "
        "trust_remote_code; 4.56.0-5.2.x, fixed in 5.3.0) and CVE-2026-9856 (high: save_pretrained path traversal "
        "through chat_template keys; fixed in 5.10.0)",
    ),
    Floor(
        "torch",
        "2.10.0",
        "CVE-2025-32434 (critical: torch.load(weights_only=True) can still run code; fixed in 2.6.0) and "
        "CVE-2026-24747 (GHSA-63cw-57p8-fm3p, high: a crafted checkpoint corrupts memory in the weights_only "
        "unpickler; fixed in 2.10.0)",
    ),
    Floor("sentence-transformers", "6.3.0", f"no known advisory as of {CHECKED}; the release the course teaches"),
    Floor("datasets", "5.2.0", f"no known advisory as of {CHECKED}; the release the course teaches"),
    Floor("openai", "1.40.0", f"no known advisory as of {CHECKED}; the oldest client the course is written for"),
)


def installed(package: str) -> str | None:
    """The installed version of `package`, or None."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def below_floor(versions: dict[str, str | None]) -> list[str]:
    """One line per package in `versions` that is below its floor: what is installed, the advisories, the fix."""
    problems = []
    for floor in FLOORS:
        found = versions.get(floor.package)
        if found is not None and Version(found) < Version(floor.version):
            problems.append(
                f"{floor.package} {found} is below {floor.version} ({floor.advisories}): "
                f"`pip install '{floor.package}>={floor.version}'`, or `make setup` for the course's pins"
            )
    return problems
