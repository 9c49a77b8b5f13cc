"""The built site in a real browser: Debian's headless Chromium, driven by Selenium (`make browser`).

Serves outputs/book/site over http.server on a free port and opens the landing page and every
notebook page: plots are images that loaded, no page shows an error output, maths is typeset by the
bundled MathJax (no raw `$...$` left, no visible backslash such as `lora\\_scaling`, formulas at full size
and wide ones scrolling), each page has its launch links when the site was built with a repository
URL and none when it was not (outputs/book/build.json says which), and the search finds a word.
Screenshots go to outputs/book/screenshots/. Without a built site the tests skip, unless
SFTLIB_SITE_REQUIRED=1 (as `make browser` sets), when they fail.
"""

import functools
import json
import os
import re
import shutil
import tempfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.helpers import ROOT as ROOT_DIR

ROOT = Path(ROOT_DIR)
SITE = Path(os.environ.get("SFTLIB_SITE_DIR") or ROOT / "outputs" / "book" / "site")  # another built site to check
EXECUTED = ROOT / "outputs" / "executed"
BUILT_WITH = SITE.parent / "build.json"  # {"repo_url": ..., "branch": ...}, written by book/build.py
SHOTS = ROOT / "outputs" / "book" / "screenshots"
NOTEBOOKS = sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb"))
RAW_MATH = re.compile(r"\$\$.+?\$\$|\$[^$\s][^$\n]*?[^$\s\\]\$", re.S)
CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1280,1600"]


@pytest.fixture(scope="module")
def site_url():
    if not (SITE / "index.html").exists():
        if os.environ.get("SFTLIB_SITE_REQUIRED") == "1":
            pytest.fail(f"{SITE}/index.html is missing: `make book` did not build the site")
        pytest.skip("no built site: run `make book` (or `make browser`)")

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(SITE)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser(site_url):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_path):
        pytest.fail("Debian's chromium and chromium-driver are missing: `make chromium` installs them (as root)")
    profile = tempfile.mkdtemp(prefix="sftlib-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROME_FLAGS + [f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    driver.set_page_load_timeout(120)
    SHOTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def open_page(driver, url: str) -> None:
    """Load a page and wait until MathJax has typeset it (the bundled config marks <body> when done)."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    WebDriverWait(driver, 90).until(lambda d: d.execute_script(
        "return document.readyState === 'complete' && document.body.dataset.mathjax === 'done'"))


def error_outputs(driver) -> list[str]:
    return driver.execute_script("""
        const found = [];
        for (const el of document.querySelectorAll('.jp-OutputArea-output, .output_error')) {
            const text = el.innerText || '';
            if (el.matches('.output_error, [data-mime-type="application/vnd.jupyter.error"]')
                || text.includes('Traceback (most recent call last)')) found.push(text.slice(0, 300));
        }
        return found;""")


def images(driver) -> list[dict]:
    return driver.execute_script("""
        return Array.from(document.querySelectorAll('article img')).map(
            img => ({src: img.src.slice(0, 60), ok: img.complete && img.naturalWidth > 0}));""")


def repo_url() -> str:
    return json.loads(BUILT_WITH.read_text(encoding="utf-8"))["repo_url"] if BUILT_WITH.exists() else ""


def maths_problems(driver) -> list[str]:
    """Typeset formulas that show a backslash (a text-mode macro left as written) or are shrunk to the column."""
    return driver.execute_script("""
        const found = [];
        for (const c of document.querySelectorAll('mjx-container')) {
            const text = ((c.querySelector('mjx-assistive-mml') || {}).textContent || '').slice(0, 80);
            const svg = c.querySelector('svg');
            if (text.includes('\\\\')) found.push('backslash shown: ' + text);
            if (svg && getComputedStyle(svg).maxWidth !== 'none') found.push('shrunk to the column: ' + text);
            if (c.getAttribute('display') === 'true' && c.scrollWidth > c.clientWidth + 1
                && !['auto', 'scroll'].includes(getComputedStyle(c).overflowX)) found.push('clipped: ' + text);
        }
        return found;""")


def image_outputs(name: str) -> int:
    nb = json.loads((EXECUTED / f"{name}.ipynb").read_text(encoding="utf-8"))
    return sum(1 for c in nb["cells"] for o in c.get("outputs", [])
               if any(k.startswith("image/") for k in o.get("data", {})))


def test_landing_page(browser, site_url):
    open_page(browser, site_url)
    assert "DeepSpeed-Chat" in browser.title
    text = browser.find_element("css selector", "article").text
    assert "The two commands" in text and "make test" in text  # the README, rendered
    nav = browser.execute_script("return Array.from(document.querySelectorAll('.md-nav a')).map(a => a.href)")
    for name in NOTEBOOKS:
        assert any(f"/notebooks/{name}/" in href for href in nav), f"{name} is not in the navigation"
    assert any("/glossary/" in href for href in nav) and any("/data_cards/" in href for href in nav)
    assert all(i["ok"] for i in images(browser)), images(browser)
    browser.save_screenshot(str(SHOTS / "index.png"))


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_page(browser, site_url, name):
    open_page(browser, f"{site_url}notebooks/{name}/")
    assert not error_outputs(browser), f"{name}: error output on the page: {error_outputs(browser)}"
    shown = images(browser)
    broken = [i["src"] for i in shown if not i["ok"]]
    assert not broken, f"{name}: images that did not load: {broken}"
    assert len(shown) >= image_outputs(name), f"{name}: {len(shown)} images shown, {image_outputs(name)} in the run"
    markdown = browser.execute_script(
        "return Array.from(document.querySelectorAll('.jp-RenderedMarkdown')).map(e => e.innerText).join('\\n')")
    assert not RAW_MATH.findall(markdown), f"{name}: maths left as raw LaTeX: {RAW_MATH.findall(markdown)[:3]}"
    assert not maths_problems(browser), f"{name}: {maths_problems(browser)[:3]}"
    links = browser.execute_script("return Array.from(document.querySelectorAll('.launch-links a')).map(a => a.href)")
    hrefs = browser.execute_script("return Array.from(document.querySelectorAll('a')).map(a => a.href)")
    text = browser.find_element("css selector", "article").text
    assert "Where this runs." in text and "Python 3.11" in text, f"{name}: the page does not say what works where"
    assert not [h for h in hrefs if "OWNER/REPO" in h.upper()], f"{name}: a link to a placeholder repository"
    if repo_url():
        assert [h.split('/')[2] for h in links] == ["colab.research.google.com", "mybinder.org", "github.com"], links
        assert all(h.endswith(f"{name}.ipynb") for h in (links[0], links[2])) and f"{name}.ipynb" in links[1]
    else:  # built without the repository's URL: no launch, Binder or source links at all
        assert not links and not [h for h in hrefs if "colab.research" in h or "mybinder.org" in h], hrefs
    browser.save_screenshot(str(SHOTS / f"{name}.png"))
    maths = browser.find_elements("css selector", "mjx-container[display='true']")
    if maths:  # a second view, on the first displayed formula
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", maths[0])
        browser.save_screenshot(str(SHOTS / f"{name}-maths.png"))


def test_notebook_04_formulas_are_typeset(browser, site_url):
    name = next(n for n in NOTEBOOKS if n.startswith("04_"))
    open_page(browser, f"{site_url}notebooks/{name}/")
    assert browser.find_elements("css selector", ".jp-RenderedMarkdown mjx-container svg"), "no typeset maths"


def test_search_finds_a_known_word(browser, site_url):
    from selenium.webdriver.support.ui import WebDriverWait

    open_page(browser, site_url)
    box = browser.find_element("css selector", "input.md-search__input")
    box.click()
    box.send_keys("gradient")
    WebDriverWait(browser, 60).until(lambda d: d.find_elements("css selector", ".md-search-result__item"))
    hits = browser.execute_script(
        "return Array.from(document.querySelectorAll('.md-search-result__link')).map(a => a.href)")
    assert any("/notebooks/" in h for h in hits), hits
    browser.save_screenshot(str(SHOTS / "search.png"))
