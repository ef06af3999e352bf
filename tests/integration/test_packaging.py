"""The wheel carries the page: installed rawchat serves it from any directory."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path

from tests.processes import RawchatProcess

ROOT = Path(__file__).resolve().parents[2]


def test_an_installed_wheel_serves_the_shipped_page_from_anywhere(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("rawchat-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}
    where = subprocess.run(
        [sys.executable, "-c", "import rawchat; print(rawchat.__file__)"],
        cwd=elsewhere,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert where.startswith(str(site)), "the test must exercise the wheel, not the checkout"
    server = RawchatProcess(cwd=elsewhere, env=env)
    try:
        assert server.log[0] == server.ready.string, "no start-up line"
        base = server.origin
        for name, target in (("index.html", "/"), ("tutorial.html", "/tutorial.html")):
            with urllib.request.urlopen(base + target, timeout=10) as response:
                assert response.read() == (ROOT / "static" / name).read_bytes()
    finally:
        assert server.stop() == 0
