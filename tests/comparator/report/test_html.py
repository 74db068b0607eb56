"""The HTML report of the demo's failing comparison: structure without a browser, then headless Chromium.

The demo (``dumpcmp demo``, seed 1) dumps the example engine as a 1-process baseline
and a TP 2 x EP 2 target whose EP reduction is skipped under fusion; its first
divergence is ``moe_output[layer=1]@step0``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from comparator.report.png import read_png_size
from tests.helpers.example_runs import demo_runs, dumpcmp, example_runs_root

FIRST = "moe_output[layer=1]@step0"
SECTIONS = ("verdict", "summary", "first-divergence", "error-plot", "token-heatmap", "all-tensors", "runs")
VOID = {"meta", "br", "hr", "img", "input", "link", "col", "area", "base", "embed", "source", "track", "wbr"}
# SVG elements that may close themselves (<circle .../>).
SELF_CLOSING = VOID | {"rect", "line", "circle", "path", "polyline", "stop"}


@pytest.fixture(scope="module")
def report_html(tmp_path_factory) -> tuple[Path, str]:
    baseline, target = demo_runs(example_runs_root(tmp_path_factory))
    out = tmp_path_factory.mktemp("html") / "report.html"
    proc = dumpcmp("compare", str(baseline), str(target), "--format", "html", "--output", str(out))
    assert proc.returncode == 1, proc.stderr  # the demo's target diverges
    return out, out.read_text(encoding="utf-8")


class _Checker(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.problems: list[str] = []
        self.ids: dict[str, str] = {}
        self.urls: list[str] = []
        self.meta_csp: str | None = None
        self.rows = 0
        self.text_by_id: dict[str, list[str]] = {}
        self._capture: list[str] = []

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if "id" in attributes:
            if attributes["id"] in self.ids:
                self.problems.append(f"duplicate id {attributes['id']}")
            self.ids[attributes["id"]] = tag
        for name in ("src", "href", "action", "poster", "data"):
            if attributes.get(name) is not None:
                self.urls.append(attributes[name])
        if tag == "meta" and (attributes.get("http-equiv") or "").lower() == "content-security-policy":
            self.meta_csp = attributes.get("content")
        if tag == "tr" and attributes.get("data-status"):
            self.rows += 1
        if tag not in VOID:
            self.stack.append(tag)
            self._capture.append(attributes.get("id") or "")

    def handle_startendtag(self, tag, attrs):
        if tag not in SELF_CLOSING:
            self.problems.append(f"<{tag}/> cannot close itself")
        self.handle_starttag(tag, attrs)
        if tag not in VOID:
            self.handle_endtag(tag)

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes <{self.stack[-1] if self.stack else 'nothing'}>")
            return
        self.stack.pop()
        self._capture.pop()

    def handle_data(self, data):
        for element_id in self._capture:
            if element_id:
                self.text_by_id.setdefault(element_id, []).append(data)


def test_html_report_structure(report_html):
    _, page = report_html
    checker = _Checker()
    checker.feed(page)
    checker.close()
    assert not checker.problems, checker.problems[:5]
    assert not checker.stack, f"unclosed: {checker.stack}"
    assert page.startswith("<!DOCTYPE html>")
    for section in SECTIONS:
        assert section in checker.ids, f"missing section #{section}"
    # Nothing is fetched: every link is in-page, and the CSP forbids any fetch anyway.
    assert checker.urls and all(url.startswith("#") for url in checker.urls), checker.urls
    assert checker.meta_csp is not None and "default-src 'none'" in checker.meta_csp
    assert not re.search(r"url\(|@import|<link|<iframe|<img", page)
    external = set(re.findall(r"https?://[^\s\"'<>)]+", page)) - {"http://www.w3.org/2000/svg"}
    assert not external, external
    # What a reader looks for first.
    assert "".join(checker.text_by_id["first-divergence-name"]) == FIRST
    verdict = "".join(checker.text_by_id["verdict"])
    assert "FAIL" in verdict and "exit 1" in verdict
    hint = "".join(checker.text_by_id["first-divergence"])
    assert "missing all-reduce over ep" in hint
    assert 'class="first-divergence-mark"' in page and "first divergence: " + FIRST in page
    assert page.count("<svg") >= 3  # the error plot and two heatmaps
    summary = "".join(checker.text_by_id["summary"])
    total = int(re.search(r"(\d+) tensors", summary).group(1))
    assert checker.rows == total > 50
    runs = "".join(checker.text_by_id["runs"])
    assert "examples.moe_engine" in runs and "--ep 2" in runs and "ep=2" in runs and "moe_tp=2" in runs


# ------------------------------------------------------------------ headless Chromium
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-default-apps", "--mute-audio", "--hide-scrollbars")


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    message = "headless Chromium is not installed (Debian: apt-get install -y chromium; .ci/run installs it)"
    if os.environ.get("DUMPCMP_REQUIRE_ENGINES") == "1":
        pytest.fail(message + " and DUMPCMP_REQUIRE_ENGINES=1")
    pytest.skip(message)


def _browse(page: Path, profile: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=1",
               "--virtual-time-budget=3000", *extra, page.as_uri()]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def _failed_loads(log: str) -> list[str]:
    """The page's own console messages and failed loads in Chromium's log.

    NOTE: the browser itself logs net errors of its own (e.g. its account fetcher under
    --v=1); only what the page caused counts: console lines (the report logs nothing,
    so any is an error or a CSP report) and failed resource loads.
    """
    return [line for line in log.splitlines()
            if ":CONSOLE" in line or "Failed to load resource" in line or "Content Security Policy" in line]


def test_html_report_in_headless_chromium(report_html, tmp_path):
    page, _ = report_html
    shot = tmp_path / "report.png"
    proc = _browse(page, tmp_path / "profile-1", "--window-size=1280,2400", f"--screenshot={shot}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert shot.exists() and read_png_size(shot.read_bytes()) == (1280, 2400)
    assert shot.stat().st_size > 50_000  # a rendered page, not a blank one
    assert not _failed_loads(proc.stderr), _failed_loads(proc.stderr)[:5]

    dom = _browse(page, tmp_path / "profile-2", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    root = re.search(r"<html[^>]*>", dom.stdout).group(0)
    # Set by the page's own scripts once loaded: no failed load, no CSP violation, nothing fetched.
    for attribute, value in (("data-ready", "1"), ("data-load-errors", "0"), ("data-csp-violations", "0"),
                             ("data-resources", "0"), ("data-table-ready", "1")):
        assert f'{attribute}="{value}"' in root, root
    assert f'id="first-divergence-name">{FIRST}<' in dom.stdout
    assert re.search(r"(\d+) of \1 tensors shown", dom.stdout)  # the table script ran
    assert not _failed_loads(dom.stderr), _failed_loads(dom.stderr)[:5]


def test_the_browser_check_sees_a_fetch(report_html, tmp_path):
    """Negative control: a page that tries to fetch is caught by the same checks."""
    _, html = report_html
    leaky = tmp_path / "leaky.html"
    leaky.write_text(html.replace("<body>", '<body><img src="http://127.0.0.1:9/x.png" alt="">', 1), encoding="utf-8")
    dom = _browse(leaky, tmp_path / "profile", "--dump-dom")
    root = re.search(r"<html[^>]*>", dom.stdout).group(0)
    assert 'data-csp-violations="1"' in root and 'data-load-errors="1"' in root, root
    assert any("http://127.0.0.1:9/x.png" in line for line in _failed_loads(dom.stderr))


# ------------------------------------------------------------------ failures without a metric
@pytest.fixture(scope="module")
def shape_mismatch_html(tmp_path_factory) -> tuple[Path, str]:
    """Seed 5 compared with --aligner none: most tensors fail on shape, with no metric to plot."""
    kept = tmp_path_factory.mktemp("seed5")
    proc = dumpcmp("demo", "--bug", "dp_attention_padding", "--keep", str(kept), timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = kept / "report.html"
    proc = dumpcmp("compare", str(kept / "baseline"), str(kept / "target"), "--aligner", "none",
                   "--format", "html", "--output", str(out))
    assert proc.returncode == 1, proc.stderr
    return out, out.read_text(encoding="utf-8")


def test_failures_without_a_metric_get_a_visible_mark(shape_mismatch_html):
    _, html = shape_mismatch_html
    plot = html.split('id="error-plot"', 1)[1].split("</section>", 1)[0]
    marks = plot.count('class="no-metric"')
    summary = re.search(r"(\d+) without a metric \((\d+) failing\)", plot)
    assert summary is not None and marks == int(summary.group(1)) and int(summary.group(2)) > 50
    assert 'class="no-metric-lane"' in plot


def test_shape_mismatch_report_does_not_look_like_a_pass(shape_mismatch_html, tmp_path):
    """The error plot, looked at in headless Chromium: 84 failures outweigh 16 passes in ink.

    Before the no-metric lane, failures without a metric were 1-pixel dashes on the axis and
    the plot showed about 250 red pixels (mostly the first-divergence line) to 630 green.
    """
    from PIL import Image  # pillow: a test dependency (pyproject's test extra)

    _, html = shape_mismatch_html
    plot = html.split('id="error-plot"', 1)[1].split("</section>", 1)[0]
    page = tmp_path / "plot.html"
    page.write_text("<html><body style='margin:0'>" + plot[plot.index("<svg"): plot.rindex("</svg>") + 6]
                    + "</body></html>", encoding="utf-8")
    shot = tmp_path / "plot.png"
    proc = _browse(page, tmp_path / "profile", "--window-size=1000,360", f"--screenshot={shot}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    image = Image.open(shot).convert("RGB")
    pixels = image.load()
    width, height = image.size

    def ink(colour: str) -> int:
        rgb = tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))
        return sum(all(abs(a - b) <= 40 for a, b in zip(pixels[x, y], rgb)) for x in range(width) for y in range(height))

    reds, greens = ink("#c62828"), ink("#2e7d32")
    assert reds > 2 * greens > 0, (reds, greens)
