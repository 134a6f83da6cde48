"""GET / on the status API, rendered by a real headless Chromium (Debian's chromium): the
page shows the state and the models and gateway tables of a running supervisor."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from html.parser import HTMLParser

import pytest
from supervised import Supervised
from testbed import chat

pytestmark = pytest.mark.integration


class Tables(HTMLParser):
    """The rendered DOM's tables: class -> rows of cell texts."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._table: str | None = None
        self._cell: list[str] | None = None
        self.state = ""
        self._in_state = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table":
            self._table = a.get("class") or ""
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = []
        elif tag == "span" and a.get("id") == "state":
            self._in_state = True

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._table is not None:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None
        elif tag == "span":
            self._in_state = False

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._in_state:
            self.state += data


def chromium() -> str:
    path = shutil.which("chromium")
    assert path, "chromium is missing: scripts/test installs Debian's chromium package"
    return path


def test_the_status_page_renders_in_chromium_with_the_models_table(
        make_process_supervised: Callable[..., Supervised]) -> None:
    sup = make_process_supervised({"tiny-a": "tiny-a.gguf", "tiny-b": "tiny-b.gguf"},
                                  gateway={"enabled": True})
    sup.start()
    sup.wait_for(lambda s: s["state"] == "RUNNING" and all(m["listed"] for m in s["models"]),
                 60, "RUNNING with both models listed")
    assert chat(sup.gateway_url, "tiny-a")[0] == 200
    out = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
         f"http://127.0.0.1:{sup.status_port}/"],
        capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    page = Tables()
    page.feed(out.stdout)
    assert page.state == "RUNNING"
    models = page.tables["models"]
    assert models[0][:5] == ["model", "file", "listed", "loaded", "health"]
    assert {row[0]: row[2] for row in models[1:]} == {"tiny-a": "yes", "tiny-b": "yes"}
    gateway = {row[0]: row for row in page.tables["gateway"][1:]}
    assert gateway["tiny-a"][4] == "1"  # one completed request
    assert page.tables["events"][1:], "recent events listed"
