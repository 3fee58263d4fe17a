"""constraints.txt pins what pyproject.toml accepts, and the virtualenv is what it pins."""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]


def pins() -> dict[str, Version]:
    out: dict[str, Version] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, _, version = line.partition("==")
        assert version, f"constraints.txt: {line!r} is not an exact pin (name==version)"
        out[canonicalize_name(name)] = Version(version)
    return out


def requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    listed = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        listed += extra
    return [Requirement(r) for r in listed]


def test_every_requirement_is_pinned_within_what_pyproject_accepts() -> None:
    pinned = pins()
    for requirement in requirements():
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{requirement.name} has no pin in constraints.txt"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (
            f"constraints.txt pins {name}=={pinned[name]}, outside pyproject's "
            f"{requirement.specifier}"
        )


def test_the_virtualenv_holds_exactly_the_pinned_versions() -> None:
    """A stale virtualenv (scripts/bootstrap.sh reinstalls when either file changes)."""
    for name, version in pins().items():
        installed = Version(metadata.version(name))
        assert installed == version, f"{name}: installed {installed}, pinned {version}"
