"""The command line: what rawchat accepts and refuses before it starts."""

from __future__ import annotations

import pytest

from rawchat.cli import config_from_args


def test_an_abbreviated_flag_is_refused_not_guessed(capsys: pytest.CaptureFixture[str]) -> None:
    """``--work 2`` once meant ``--workers 2`` in the supervisor, and each worker, given the
    same argv without --workers, started workers of its own: only whole flags are accepted."""
    broker = ["--broker", "redis://127.0.0.1:6379/0"]
    assert config_from_args(["--workers", "2", *broker]).workers == 2
    capsys.readouterr()
    with pytest.raises(SystemExit) as refused:
        config_from_args(["--work", "2", *broker])
    assert refused.value.code == 2
    assert "--work" in capsys.readouterr().err
