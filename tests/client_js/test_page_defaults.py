"""bench/serving.py measures the service at the live page's defaults (camera resolution, upload size, JPEG quality,
detail): they are read here from the page itself, so the benchmark cannot drift from what users run."""

from __future__ import annotations

import sys
from html.parser import HTMLParser
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))
import serving  # noqa: E402


class _Controls(HTMLParser):
    """The page's settings controls: an input's value, a select's selected option."""

    def __init__(self) -> None:
        super().__init__()
        self.values: dict[str, str] = {}
        self._select: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "input" and a.get("id"):
            self.values[str(a["id"])] = str(a.get("value"))
        elif tag == "select":
            self._select = a.get("id")
        elif tag == "option" and self._select and "selected" in a:
            self.values[self._select] = str(a.get("value"))

    def handle_endtag(self, tag: str) -> None:
        if tag == "select":
            self._select = None


def test_the_serving_benchmark_runs_at_the_page_defaults():
    page = _Controls()
    page.feed((REPO / "client_js" / "src" / "index.html").read_text())
    w, h = (int(x) for x in page.values["opt-capture"].split("x"))
    assert serving.PAGE_CAPTURE == (w, h)
    assert serving.PAGE_SHORT_SIDE == int(page.values["opt-short-side"])
    assert serving.PAGE_QUALITY == round(100 * float(page.values["opt-quality"]))
    assert serving.PAGE_STRIDE == int(page.values["opt-detail"])
