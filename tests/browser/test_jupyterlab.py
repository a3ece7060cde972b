"""The one real-browser check: JupyterLab + Debian's chromium (driven by Playwright) shows the
generation widget, a click on Generate streams text into it, and a screenshot is kept.

Run it alone with `python -m pytest -m browser`; skip it with `-m "not browser"`. It needs
`apt-get install chromium` and `pip install playwright` (the `dev` extra); no browser download.
The screenshot goes to tests/browser/out/generation_widget.png (git-ignored).
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.timeout(170)]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "browser", "out")
CHROMIUM = os.environ.get("TOOLKIT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PROMPT = "The capital of France is"

CELL = f"""import toolkit
from toolkit.notebook import GenerationWidget
m = toolkit.load()
w = GenerationWidget(m, prompt={PROMPT!r}, temperature=0.0, max_new_tokens=24, shade=True)
w"""
LONG = """long = GenerationWidget(m, prompt="Once upon a time", temperature=0.0, max_new_tokens=2000)
long"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_notebook(path):
    nb = {"cells": [{"cell_type": "code", "execution_count": None, "id": "gen", "metadata": {}, "outputs": [],
                     "source": CELL},
                    {"cell_type": "code", "execution_count": None, "id": "long", "metadata": {}, "outputs": [],
                     "source": LONG}],
          "metadata": {"kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python",
                                      "name": "python3"}},
          "nbformat": 4, "nbformat_minor": 5}
    with open(path, "w") as f:
        json.dump(nb, f)


@pytest.fixture
def lab(tmp_path):
    """A JupyterLab server on 127.0.0.1 (no token) over tmp_path, with its own config dirs."""
    env = dict(os.environ)
    for var, sub in (("JUPYTER_CONFIG_DIR", "config"), ("JUPYTER_RUNTIME_DIR", "runtime"),
                     ("JUPYTERLAB_SETTINGS_DIR", "settings"), ("JUPYTERLAB_WORKSPACES_DIR", "workspaces"),
                     ("IPYTHONDIR", "ipython")):
        env[var] = str(tmp_path / sub)
        os.makedirs(env[var])
    # no news toast in the screenshot
    news = tmp_path / "settings" / "@jupyterlab" / "apputils-extension"
    news.mkdir(parents=True)
    (news / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")  # the kernel imports this checkout
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    write_notebook(notebooks / "generation.ipynb")
    port = free_port()
    log = open(tmp_path / "lab.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         "--IdentityProvider.token=", "--ServerApp.password=", "--ServerApp.allow_root=True",
         "--ServerApp.port_retries=0", f"--ServerApp.root_dir={notebooks}",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/status", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                pytest.fail("JupyterLab did not start:\n" + (tmp_path / "lab.log").read_text()[-3000:])
            time.sleep(0.25)
        yield url, tmp_path
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_generation_widget_streams_in_jupyterlab(lab):
    from playwright.sync_api import expect, sync_playwright

    url, tmp = lab
    assert os.path.exists(CHROMIUM), f"no chromium at {CHROMIUM}: apt-get install chromium"
    os.makedirs(OUT, exist_ok=True)
    shot = os.path.join(OUT, "generation_widget.png")
    if os.path.exists(shot):
        os.remove(shot)
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(str(tmp / "chromium"), executable_path=CHROMIUM, headless=True,
                                                   args=CHROMIUM_ARGS, viewport={"width": 1280, "height": 900})
        try:
            page = ctx.new_page()
            page.goto(f"{url}/lab/tree/generation.ipynb")
            # the execute is dropped if sent before the kernel is idle
            expect(page.get_by_text("Python 3 (ipykernel) | Idle")).to_be_visible(timeout=90_000)
            page.locator(".jp-Cell .jp-InputArea-editor").first.click()
            page.keyboard.press("Control+Enter")
            widget = page.locator(".tk-generation").first
            expect(widget).to_be_visible(timeout=90_000)
            go = widget.get_by_role("button", name="Generate")
            expect(go).to_be_enabled()
            expect(widget.locator("textarea")).to_have_value(PROMPT)
            go.click()
            output = widget.locator(".tk-output")
            # streamed text: the first token, then the status line reports a finished generation
            expect(output).to_contain_text(PROMPT, timeout=60_000)
            expect(output).to_contain_text("Paris", timeout=60_000)
            expect(widget.get_by_text("24 tokens")).to_be_visible(timeout=60_000)
            tokens = output.locator(".tk-tok")
            assert tokens.count() >= 20
            assert "p=0." in tokens.first.get_attribute("title")   # the hover text
            page.screenshot(path=shot)
            # Stop in the browser ends a long generation mid-way, and the widget can run again
            page.locator(".jp-Cell .jp-InputArea-editor").nth(1).click()
            page.keyboard.press("Control+Enter")
            long = page.locator(".tk-generation").nth(1)
            expect(long).to_be_visible(timeout=60_000)
            long.get_by_role("button", name="Generate").click()
            expect(long.get_by_text("generating...")).to_be_visible(timeout=30_000)
            long.get_by_role("button", name="Stop").click()
            status = long.get_by_text("stopped")
            expect(status).to_be_visible(timeout=30_000)
            assert int(status.inner_text().split()[0]) < 2000
            expect(long.get_by_role("button", name="Generate")).to_be_enabled()
            go.click()                                   # the first widget, a second time
            expect(widget.get_by_text("24 tokens")).to_be_visible(timeout=60_000)
            expect(widget.get_by_text("done")).to_be_visible(timeout=60_000)
        finally:
            ctx.close()
    with open(shot, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
