"""Log format under journald: the stream check and the one-line rendering (the real journal is
read in tests/integration/test_systemd_unit.py)."""

from __future__ import annotations

import os
from pathlib import Path

from supervisor.logs import _journal_line, under_journald


def test_journald_is_recognised_by_the_device_and_inode_of_stderr(tmp_path: Path) -> None:
    with (tmp_path / "stream").open("w") as fh:
        st = os.fstat(fh.fileno())
        assert under_journald({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, fh.fileno())
        # A child of the unit whose stderr was redirected elsewhere inherits the variable.
        assert not under_journald({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"},
                                  fh.fileno())
        assert not under_journald({}, fh.fileno())
        assert not under_journald({"JOURNAL_STREAM": "junk"}, fh.fileno())


def test_a_journal_line_has_the_priority_no_timestamp_and_one_line() -> None:
    line = _journal_line(None, "warning", {
        "event": "server.failed", "level": "warning", "timestamp": "2026-12-02T10:00:00Z",
        "cause": 'exit 1: "bad"\nnext', "restarts": 3, "model": "tiny-a"})
    assert line == ('<4>server.failed cause="exit 1: \\"bad\\"\\nnext" restarts=3 '
                    "model=tiny-a")
    assert _journal_line(None, "error", {"event": "x", "level": "error"}) == "<3>x"
    assert _journal_line(None, "info", {"event": "x", "level": "info", "v": ""}) == '<6>x v=""'
