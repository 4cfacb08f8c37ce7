"""The map a user opens: `geoloc locate --map` in a real headless Chromium.

The page is served from 127.0.0.1 with Leaflet's own files from the npm package pinned in
tests/browser/package.json (``npm ci`` there; the map's CDN address is rewritten to the local
copy, in this test only). Every other host name resolves to nothing, so map tiles simply do not
load. A probe injected into the page records JavaScript errors and any alert() call, counts the
markers Leaflet drew, opens every popup and tooltip (so their HTML enters the DOM), and writes
its findings into the DOM, which ``--dump-dom`` hands back.

Needs: Debian's ``chromium`` package and ``npm ci`` in tests/browser. Skips, saying so, when
Chromium is absent.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from geoloc.cli import app

pytestmark = [pytest.mark.browser, pytest.mark.slow]

BROWSER_DIR = Path(__file__).resolve().parent / "browser"
LEAFLET_DIST = BROWSER_DIR / "node_modules" / "leaflet" / "dist"
CHROMIUM = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)

# Path and file names a user could really have; each would run script if pasted as HTML.
XSS_DIR = '"><script>alert(1)<'
XSS_FILE = "script>.jpg"  # in XSS_DIR: …/"><script>alert(1)</script>.jpg
XSS_DB_NAME = "<img src=x onerror=alert(2)>.jpg"
XSS_QUERY_NAME = "<img src=x onerror=alert(3)>${alert(4)}.jpg"

PROBE_HEAD = """<script>
window.__geoloc = {errors: [], alerts: []};
window.addEventListener('error', function (e) {
  if (e instanceof ErrorEvent) { window.__geoloc.errors.push(e.message + ' @' + e.lineno); }
}, true);
window.addEventListener('unhandledrejection', function (e) {
  window.__geoloc.errors.push('unhandled rejection: ' + e.reason);
});
window.alert = window.confirm = window.prompt = function (m) { window.__geoloc.alerts.push(String(m)); };
</script>"""

PROBE_TAIL = """<script>
window.addEventListener('load', function () { setTimeout(function () {
  var out = {markers: 0, maps: 0, popups: 0, tooltips: 0, thumbs: 0, injected: 0,
             popupText: [], layerNames: []};
  try {
    out.markers = document.querySelectorAll('.leaflet-marker-icon').length;
    var maps = [];
    Object.keys(window).forEach(function (k) {
      try { if (window[k] instanceof L.Map) { maps.push(window[k]); } } catch (e) {}
    });
    out.maps = maps.length;
    var inspect = function (el) {
      el.querySelectorAll('*').forEach(function (node) {
        if (node.tagName === 'SCRIPT' || node.tagName === 'IFRAME') { out.injected++; }
        Array.prototype.forEach.call(node.attributes, function (a) {
          if (a.name.indexOf('on') === 0) { out.injected++; }
        });
      });
    };
    maps.forEach(function (m) {
      m.eachLayer(function (layer) {
        if (layer.getPopup && layer.getPopup()) {
          layer.openPopup();
          var el = layer.getPopup().getElement();
          if (el) {
            out.popups++;
            out.thumbs += el.querySelectorAll('img.geoloc-thumb').length;
            out.popupText.push(el.textContent);
            inspect(el);
          }
        }
        if (layer.getTooltip && layer.getTooltip()) {
          layer.openTooltip();
          var tip = layer.getTooltip().getElement();
          if (tip) { out.tooltips++; inspect(tip); }
        }
      });
    });
    document.querySelectorAll('.leaflet-control-layers-overlays label').forEach(function (l) {
      out.layerNames.push(l.textContent.trim());
      inspect(l);
    });
  } catch (e) { window.__geoloc.errors.push('probe: ' + e); }
  setTimeout(function () {  // give an injected onerror handler the time to fire
    out.errors = window.__geoloc.errors;
    out.alerts = window.__geoloc.alerts;
    var pre = document.createElement('pre');
    pre.id = 'geoloc-probe';
    pre.textContent = JSON.stringify(out);
    document.body.appendChild(pre);
  }, 500);
}, 100); });
</script>"""


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("headless Chromium is not installed (Debian: apt-get install chromium)")
    if not (LEAFLET_DIST / "leaflet.js").is_file() and shutil.which("npm"):
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=BROWSER_DIR,
                       capture_output=True, timeout=300)
    if not (LEAFLET_DIST / "leaflet.js").is_file():
        pytest.fail("Leaflet's files are missing: run `npm ci` in tests/browser")
    return CHROMIUM


@pytest.fixture(scope="module")
def xss_map(tmp_path_factory, lund_dir):
    """A map written by `geoloc locate --map` for two queries, with hostile file names."""
    from geoloc.indexer import IndexConfig, index_photos

    root = tmp_path_factory.mktemp("browsermap")
    photos = root / "photos"
    (photos / XSS_DIR).mkdir(parents=True)
    targets = [photos / XSS_DIR / XSS_FILE, photos / XSS_DB_NAME] + [
        photos / f"{i:02d}.jpg" for i in (5, 7, 9, 11)
    ]
    for src, dst in zip((1, 3, 5, 7, 9, 11), targets):
        shutil.copy(lund_dir / f"{src:02d}.jpg", dst)
    index_photos([photos], root / "db", IndexConfig(model="lite0-vlad", max_side=224, device="cpu"))
    q1 = root / "02.jpg"
    q2 = root / XSS_QUERY_NAME
    shutil.copy(lund_dir / "02.jpg", q1)
    shutil.copy(lund_dir / "04.jpg", q2)
    out = root / "map.html"
    result = CliRunner().invoke(
        app, ["locate", str(q1), str(q2), "--db", str(root / "db"), "--top-k", "5", "--map", str(out)]
    )
    assert result.exit_code == 0, result.output
    return out, targets[0]


def _serve(folder: Path):
    handler = partial(_QuietHandler, directory=str(folder))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def open_in_chromium(chromium: str, page: Path, workdir: Path) -> dict:
    """Serve ``page`` with local Leaflet, load it headless, return what the probe found."""
    site = workdir / "site"
    shutil.copytree(LEAFLET_DIST, site / "leaflet")
    text = page.read_text(encoding="utf-8")
    text, n = re.subn(r"https://cdn\.jsdelivr\.net/npm/leaflet@[^/\"']+/dist/", "/leaflet/", text)
    assert n == 2, "the map no longer loads Leaflet from the expected CDN address"
    text = text.replace("<head>", "<head>" + PROBE_HEAD, 1)
    text = text.replace("</html>", PROBE_TAIL + "\n</html>")
    (site / "map.html").write_text(text, encoding="utf-8")
    server = _serve(site)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/map.html"
        cmd = [
            chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--disable-dev-shm-usage", f"--user-data-dir={workdir / 'profile'}",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            "--virtual-time-budget=10000", "--dump-dom", url,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                              env={**os.environ, "HOME": str(workdir)})
    finally:
        server.shutdown()
        server.server_close()
    found = re.search(r'<pre id="geoloc-probe">(.*?)</pre>', proc.stdout, re.S)
    assert found, f"the probe never reported (chromium exit {proc.returncode}): {proc.stderr[-2000:]}"
    return json.loads(html.unescape(found.group(1)))


def test_map_renders_markers_without_javascript_errors_or_injected_script(browser, xss_map, tmp_path):
    page, xss_path = xss_map
    probe = open_in_chromium(browser, page, tmp_path)
    assert probe["errors"] == []
    assert probe["alerts"] == []  # neither <script> nor onerror= in a file name ran
    assert probe["injected"] == 0
    assert probe["maps"] == 1
    # Per query: the estimate, 5 candidates, the query's own GPS position.
    assert probe["markers"] == 2 * (1 + 5 + 1)
    assert probe["popups"] == 2 * (1 + 5 + 1)
    assert probe["thumbs"] == 2 * (1 + 5)  # every photo popup shows its thumbnail
    # The hostile names are shown as the text they are.
    assert any(str(xss_path) in t for t in probe["popupText"])
    assert any(XSS_DB_NAME in t for t in probe["popupText"])
    assert sorted(probe["layerNames"]) == ["1. 02.jpg", f"2. {XSS_QUERY_NAME}"]


def test_the_probe_does_catch_script_errors_and_injected_html(browser, xss_map, tmp_path):
    """The assertions above mean something: a page with a bug and an unescaped name fails them."""
    page, _ = xss_map
    text = page.read_text(encoding="utf-8")
    map_var = re.search(r"var (map_[0-9a-f]+) = L\.map\(", text).group(1)
    bad = tmp_path / "bad.html"
    bad.write_text(
        text.replace(
            "</html>",
            f"<script>L.marker([55.698, 13.195]).addTo({map_var})"
            ".bindPopup('<img src=x onerror=alert(9)>').openPopup();\n"
            "noSuchFunction();</script>\n</html>",
        ),
        encoding="utf-8",
    )
    probe = open_in_chromium(browser, bad, tmp_path)
    assert probe["markers"] == 2 * (1 + 5 + 1) + 1
    assert "9" in probe["alerts"]
    assert any("noSuchFunction" in e for e in probe["errors"])
