"""infra/local/ui_screenshots.py: the refusal without a demo store, and (with Debian's chromium) real screenshots."""

import shutil
import subprocess
import sys

import pytest

from infra.local.ui_screenshots import main, screenshot


def test_without_a_demo_store_it_says_to_run_the_demo(tmp_path):
    with pytest.raises(SystemExit, match="run `make demo` first"):
        main(["--store", str(tmp_path / "nothing"), "--out", str(tmp_path / "ui")])
    assert not (tmp_path / "ui").exists()


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")
def test_a_local_page_renders_to_a_png(tmp_path):
    (tmp_path / "index.html").write_text("<h1>ccoe</h1>" + "<p>registry</p>" * 200)
    server = subprocess.Popen([sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1"], cwd=tmp_path,
                              stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline().split(" port ")[1].split()[0])
        screenshot(shutil.which("chromium"), f"http://127.0.0.1:{port}/index.html", tmp_path / "page.png", budget_ms=2000)
    finally:
        server.terminate()
        server.wait()
    assert (tmp_path / "page.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
