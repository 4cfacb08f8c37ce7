"""The map a user opens: `geoloc locate --map` in a real headless Chromium, with no network.

The page is opened from disk (``file://``) exactly as geoloc wrote it, with every host name
unresolvable (``--host-resolver-rules="MAP * ~NOTFOUND"``): the Leaflet it inlines is all it has,
so a page that still needed a script or stylesheet from elsewhere would draw no marker. A probe
injected into the page records JavaScript errors, any alert() call, every resource that failed
to load and every element that points at another host; it counts the markers Leaflet drew and
the rows of the table of answers, opens every popup and tooltip (so their HTML enters the DOM),
and writes its findings into the DOM, which ``--dump-dom`` hands back.

Needs: Debian's ``chromium`` package. Skips, saying so, when Chromium is absent.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from geoloc.cli import app

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)
TILES = "https://tile.openstreetmap.org/"

# Path and file names a user could really have; each would run script if pasted as HTML.
XSS_DIR = '"><script>alert(1)<'
XSS_FILE = "script>.jpg"  # in XSS_DIR: …/"><script>alert(1)</script>.jpg
XSS_DB_NAME = "<img src=x onerror=alert(2)>.jpg"
XSS_QUERY_NAME = "<img src=x onerror=alert(3)>${alert(4)}.jpg"

PROBE_HEAD = """<script>
window.__geoloc = {errors: [], alerts: [], failed: []};
window.addEventListener('error', function (e) {
  var t = e.target;
  if (t && t !== window && t.tagName) {  // a resource that did not load: the event does not bubble
    window.__geoloc.failed.push(t.tagName + ' ' + (t.src || t.href || ''));
  } else if (e instanceof ErrorEvent) {
    window.__geoloc.errors.push(e.message + ' @' + e.lineno);
  }
}, true);
window.addEventListener('unhandledrejection', function (e) {
  window.__geoloc.errors.push('unhandled rejection: ' + e.reason);
});
window.alert = window.confirm = window.prompt = function (m) { window.__geoloc.alerts.push(String(m)); };
</script>"""

PROBE_TAIL = """<script>
window.addEventListener('load', function () { setTimeout(function () {
  var out = {markers: 0, maps: 0, popups: 0, tooltips: 0, thumbs: 0, injected: 0, rows: 0,
             popupText: [], layerNames: [], rowText: [], external: [], requested: [],
             tiles: 0, brokenTiles: 0, offlineNote: '', legendInMap: false};
  try {
    // Each photo's mark, drawn or gathered into a cluster's badge (the badges are not marks).
    out.markers = document.querySelectorAll('.leaflet-marker-icon:not(.geoloc-cluster)').length;
    document.querySelectorAll('.geoloc-results tbody tr').forEach(function (tr) {
      out.rows++;
      out.rowText.push(tr.textContent);
    });
    // Whatever in the page points at a file or a host: only tiles may.
    document.querySelectorAll('script[src], link[href], iframe, img, source, object, embed').forEach(function (el) {
      var url = el.src || el.href || el.data || '';
      if (url.indexOf('data:') === 0) { return; }
      if (el.tagName === 'IMG' && el.classList.contains('leaflet-tile') && url.indexOf(%(tiles)s) === 0) { return; }
      out.external.push(el.tagName + ' ' + url);
    });
    performance.getEntriesByType('resource').forEach(function (r) { out.requested.push(r.name); });
    document.querySelectorAll('img.leaflet-tile').forEach(function (t) {
      out.tiles++;
      var broken = t.complete && t.naturalWidth === 0;
      if (broken && getComputedStyle(t).visibility !== 'hidden') { out.brokenTiles++; }
    });
    var note = document.querySelector('.geoloc-offline');
    out.offlineNote = note ? note.textContent : '';
    out.legendInMap = !!document.querySelector('.leaflet-control-container .geoloc-legend');
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
    inspect(document.querySelector('.geoloc-results'));
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
    out.failed = window.__geoloc.failed;
    var pre = document.createElement('pre');
    pre.id = 'geoloc-probe';
    pre.textContent = JSON.stringify(out);
    document.body.appendChild(pre);
  }, 500);
}, 100); });
</script>""" % {"tiles": json.dumps(TILES)}


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("headless Chromium is not installed (Debian: apt-get install chromium)")
    return CHROMIUM


@pytest.fixture(scope="module")
def xss_site(tmp_path_factory, lund_dir):
    """A database of hostile file names, two queries, and a function writing their map."""
    from geoloc.indexing.run import IndexConfig, index_photos

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

    def write(name: str, *options: str) -> Path:
        out = root / name
        result = CliRunner().invoke(app, ["locate", str(q1), str(q2), "--db", str(root / "db"), "--top-k", "5",
                                          "--map", str(out), *options])
        assert result.exit_code == 0, result.output
        return out

    return root, write, targets[0]


@pytest.fixture(scope="module")
def xss_map(xss_site):
    root, write, xss_path = xss_site
    return write("map.html"), xss_path


def open_in_chromium(chromium: str, page: Path, workdir: Path, extra_head: str = "") -> dict:
    """Load ``page`` from disk with no host resolvable, return what the probe found.

    The probe goes into a copy next to the original, so that the page is opened from the
    folder it was written in.
    """
    text = page.read_text(encoding="utf-8")
    text = text.replace("<head>", "<head>" + PROBE_HEAD + extra_head, 1)
    text = text.replace("</html>", PROBE_TAIL + "\n</html>")
    probed = page.with_name(f"probed-{workdir.name}-{page.name}")
    probed.write_text(text, encoding="utf-8")
    cmd = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--disable-dev-shm-usage", f"--user-data-dir={workdir / 'profile'}",
        "--host-resolver-rules=MAP * ~NOTFOUND",  # every host, no exception: there is no network
        "--allow-file-access-from-files",
        "--virtual-time-budget=10000", "--dump-dom", probed.as_uri(),
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                              env={**os.environ, "HOME": str(workdir)})
    finally:
        probed.unlink()
    found = re.search(r'<pre id="geoloc-probe">(.*?)</pre>', proc.stdout, re.S)
    assert found, f"the probe never reported (chromium exit {proc.returncode}): {proc.stderr[-2000:]}"
    return json.loads(html.unescape(found.group(1)))


def assert_offline_clean(probe: dict) -> None:
    """Nothing but tiles asked of the network; tiles that failed show no broken image."""
    assert probe["external"] == []
    assert [f for f in probe["failed"] if not f.startswith("IMG " + TILES)] == []
    assert [r for r in probe["requested"] if not r.startswith(("data:", TILES))] == []
    assert probe["tiles"] > 0 and probe["brokenTiles"] == 0
    assert "Map tiles could not be loaded" in probe["offlineNote"]


def test_map_renders_offline_without_javascript_errors_or_injected_script(browser, xss_map, tmp_path):
    page, xss_path = xss_map
    probe = open_in_chromium(browser, page, tmp_path)
    assert probe["errors"] == []
    assert probe["alerts"] == []  # neither <script> nor onerror= in a file name ran
    assert probe["injected"] == 0
    assert probe["maps"] == 1
    assert_offline_clean(probe)
    assert probe["legendInMap"]
    # Per query: the estimate, 5 candidates, the query's own GPS position.
    assert probe["markers"] == 2 * (1 + 5 + 1)
    assert probe["popups"] == 2 * (1 + 5 + 1)
    # Every photo popup shows its thumbnail; an estimate's, its best candidate's beside it.
    assert probe["thumbs"] == 2 * (2 + 5)
    # The table: one row per query, the hostile name as the text it is.
    assert probe["rows"] == 2
    assert "02.jpg" in probe["rowText"][0] and XSS_QUERY_NAME in probe["rowText"][1]
    assert all(re.search(r"55\.69\d{4}", row) and "13.19" in row for row in probe["rowText"])
    # The hostile names are shown as the text they are.
    assert any(str(xss_path) in t for t in probe["popupText"])
    assert any(XSS_DB_NAME in t for t in probe["popupText"])
    assert sorted(probe["layerNames"]) == ["1. 02.jpg", f"2. {XSS_QUERY_NAME}"]


def test_a_map_to_share_has_no_thumbnails_and_relative_paths(browser, xss_site, tmp_path):
    root, write, xss_path = xss_site
    page = write("shared.html", "--no-thumbnails", "--relative-paths")
    probe = open_in_chromium(browser, page, tmp_path)
    assert probe["errors"] == [] and probe["alerts"] == [] and probe["injected"] == 0
    assert_offline_clean(probe)
    assert probe["markers"] == 2 * (1 + 5 + 1) and probe["rows"] == 2
    assert probe["thumbs"] == 0
    text = " ".join(probe["popupText"] + probe["rowText"])
    assert str(root) not in text
    assert os.path.relpath(xss_path, root) in text and "photos/05.jpg" in text


def test_the_probe_does_catch_script_errors_injected_html_and_fetched_assets(browser, xss_map, tmp_path):
    """The assertions above mean something: a page with a bug, an unescaped name and a script
    and a stylesheet from a CDN fails them."""
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
    cdn = ('<script src="https://cdn.jsdelivr.net/npm/leaflet@1.9.4/dist/leaflet.js"></script>'
           '<link rel="stylesheet" href="https://unpkg.com/leaflet@1.9.4/dist/leaflet.css"/>')
    probe = open_in_chromium(browser, bad, tmp_path, extra_head=cdn)
    assert probe["markers"] == 2 * (1 + 5 + 1) + 1
    assert "9" in probe["alerts"]
    assert any("noSuchFunction" in e for e in probe["errors"])
    assert "SCRIPT https://cdn.jsdelivr.net/npm/leaflet@1.9.4/dist/leaflet.js" in probe["external"]
    assert "LINK https://unpkg.com/leaflet@1.9.4/dist/leaflet.css" in probe["external"]
    assert any(f.startswith("SCRIPT https://cdn.jsdelivr.net/") for f in probe["failed"])
    assert any(f.startswith("LINK https://unpkg.com/") for f in probe["failed"])
    with pytest.raises(AssertionError):
        assert_offline_clean(probe)
