"""The lock files: what they pin is what is installed, and the two agree."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PIN = re.compile(r"^([A-Za-z0-9_.-]+)==([^\s;\\]+)", re.MULTILINE)


def pins(name: str) -> dict[str, str]:
    text = (ROOT / "requirements" / name).read_text()
    found = {canonicalize_name(n): v for n, v in PIN.findall(text)}
    assert found, f"requirements/{name} pins nothing"
    return found


def test_every_pin_has_hashes() -> None:
    for name in ("run.txt", "dev.txt"):
        entries = re.split(r"\n(?=[A-Za-z0-9])", (ROOT / "requirements" / name).read_text())
        for entry in entries:
            if PIN.match(entry):
                assert "--hash=sha256:" in entry, f"{name}: no hash for {entry.splitlines()[0]}"


def test_the_run_lock_is_the_dev_lock_cut_down() -> None:
    run, dev = pins("run.txt"), pins("dev.txt")
    assert {name: dev.get(name) for name in run} == run


def test_the_locks_satisfy_the_ranges_in_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = [spec for specs in project["optional-dependencies"].values() for spec in specs]
    locks = {"run.txt": project["dependencies"], "dev.txt": [*project["dependencies"], *extras]}
    for lock, wanted in locks.items():
        pinned = pins(lock)
        for spec in map(Requirement, wanted):
            if spec.marker is not None and not spec.marker.evaluate():
                continue
            version = pinned.get(canonicalize_name(spec.name))
            assert version is not None, f"{lock} does not pin {spec.name}"
            assert spec.specifier.contains(version), f"{lock}: {spec.name}=={version} not {spec}"


def test_what_is_installed_is_what_the_dev_lock_says() -> None:
    for name, version in pins("dev.txt").items():
        assert metadata.version(name) == version, f"{name} is not the locked {version}"
