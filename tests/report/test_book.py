"""`make book`: the static site of the committed run, built offline, opened in headless Chromium.

The site is built from the committed `results/tiny/` (two of its notebooks, to keep the test quick) into
the test's temporary folder, served from 127.0.0.1, and read by Debian's Chromium through Playwright (no
browser download). On the landing page and a notebook page: no console error, no request leaves the
machine, every image loaded with a non-zero natural size, MathJax typeset the math, the claims table is
there. Screenshots of both pages are saved in the test's temporary folder (the test prints where).
"""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import threading
from pathlib import Path
from urllib.parse import urlparse

import pytest

from fisherlib.report.book import build_book

ROOT = Path(__file__).resolve().parents[2]
RUN = "tiny"
NOTEBOOKS = ("01_sample_positions", "04_closed_form_exactness")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Flags known to work headless in a container; Playwright gives each launch a fresh profile.
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]  # fmt: skip

pytestmark = [pytest.mark.book, pytest.mark.slow]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the book of a results folder holding the committed run with two of its notebooks."""
    published = ROOT / "results" / RUN
    if not (published / "notebooks").is_dir():
        pytest.skip(f"results/{RUN}/notebooks/ is absent (make reproduce publishes it)")
    root = tmp_path_factory.mktemp("book")
    results = root / "results" / RUN
    (results / "notebooks").mkdir(parents=True)
    for path in published.iterdir():
        if path.is_file():
            shutil.copy2(path, results / path.name)
    for name in NOTEBOOKS:
        shutil.copy2(published / "notebooks" / f"{name}.ipynb", results / "notebooks")
    # A run that published these two notebooks (one listing notebooks it does not hold is damaged: left out).
    manifest = json.loads((published / "run.json").read_text())
    (results / "run.json").write_text(json.dumps(manifest | {"notebooks": list(NOTEBOOKS)}))
    (root / "figures").symlink_to(ROOT / "figures")  # the notebooks link ../../../figures/<run>/<name>.png
    index = build_book(root / "results", root / "out")
    assert index.is_file() and (index.parent / RUN / f"{NOTEBOOKS[1]}.html").is_file()
    return index.parent


def test_the_book_has_the_landing_page_a_page_per_run_and_its_notebooks_in_order(site: Path):
    landing = (site / "index.html").read_text()
    assert "Claims matrix" in landing and "rank_one_regime" in landing and f"{RUN}/index.html" in landing
    run_page = (site / RUN / "index.html").read_text()
    assert "Parameters" in run_page and "Model card" in run_page and "embedded:tiny" in run_page
    assert run_page.index(f"{NOTEBOOKS[0]}.html") < run_page.index(f"{NOTEBOOKS[1]}.html")
    page = (site / RUN / f"{NOTEBOOKS[1]}.html").read_text()
    assert "cdn." not in page and "googleapis" not in page and "mathjax/tex-chtml.js" in page


@pytest.fixture(scope="module")
def served(site: Path):
    handler = functools.partial(_QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium; .ci/run installs it)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (it is in the dev extra)")
    with sync_playwright() as playwright:
        try:
            chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        except Exception as error:  # noqa: BLE001 - a browser that cannot start here is a skip, not a failure
            pytest.skip(f"chromium does not start here: {str(error).splitlines()[0]}")
        yield chromium
        chromium.close()


def _open(browser, url: str, screenshot: Path) -> dict:
    """Load `url` at a reader's window size; return what the checks need, and save a full-page screenshot."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems: list[str] = []
    page.on("console", lambda message: problems.append(f"console {message.type}: {message.text}") if message.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("requestfailed", lambda request: problems.append(f"failed: {request.url}"))

    def route(route):
        if urlparse(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            problems.append(f"left the machine: {route.request.url}")
            route.abort()

    page.route("**/*", route)
    page.goto(url, wait_until="networkidle")
    page.wait_for_function("() => window.MathJax && MathJax.startup && MathJax.startup.document", timeout=30_000)
    page.evaluate("() => MathJax.startup.promise")
    facts = page.evaluate(
        """() => ({
            images: [...document.images].map(i => ({src: i.getAttribute('src'), complete: i.complete, width: i.naturalWidth, height: i.naturalHeight})),
            typeset: document.querySelectorAll('mjx-container').length,
            raw_math: [...document.querySelectorAll('.math')].filter(e => !e.querySelector('mjx-container')).length,
            mathjax_errors: document.querySelectorAll('mjx-merror').length,
            tables: [...document.querySelectorAll('table')].map(t => t.innerText.slice(0, 200)),
            title: document.title,
        })"""
    )  # fmt: skip
    page.screenshot(path=str(screenshot), full_page=True)
    page.close()
    facts["problems"] = problems
    return facts


def _check(facts: dict, images: bool = True) -> None:
    assert facts["problems"] == [], facts["problems"]
    assert facts["typeset"] > 0 and facts["raw_math"] == 0 and facts["mathjax_errors"] == 0, facts
    if images:
        assert facts["images"], "no image on the page"
    broken = [i for i in facts["images"] if not (i["complete"] and i["width"] > 0 and i["height"] > 0)]
    assert not broken, broken


def test_the_landing_page_in_a_browser(served: str, browser, tmp_path: Path):
    facts = _open(browser, f"{served}/index.html", tmp_path / "landing.png")
    print(f"screenshot: {tmp_path / 'landing.png'}")
    _check(facts, images=False)
    claims = [t for t in facts["tables"] if t.startswith("claim") and "rank_one_regime" in t]
    assert claims, facts["tables"]


def test_a_notebook_page_in_a_browser(served: str, browser, tmp_path: Path):
    facts = _open(browser, f"{served}/{RUN}/{NOTEBOOKS[1]}.html", tmp_path / "notebook.png")
    print(f"screenshot: {tmp_path / 'notebook.png'}")
    _check(facts)
    assert len(facts["images"]) >= 6 and all(i["width"] >= 600 for i in facts["images"] if "_images" in (i["src"] or ""))
    assert any("median_rho" in t for t in facts["tables"]), facts["tables"]
