"""`geoloc review`: the decisions, the server's security, the CLI, and the page in a real browser.

One located set (eight Lund photos as the database, four street photos with their GPS taken out
and one Paris photo under a hostile name as queries) serves every test of the module; one
Chromium (the system's, driven by Playwright) serves the browser tests.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from geoloc.cli import app

EXIFTOOL = shutil.which("exiftool")
CHROMIUM = "/usr/bin/chromium"
HOSTILE = "<img src=x onerror=alert(1)>.jpg"


@pytest.fixture(scope="module")
def site(tmp_path_factory, lund_dir, data_dir):
    """The database, the queries (no GPS of their own) and their answers, located once."""
    if EXIFTOOL is None:
        pytest.skip("exiftool is not installed")
    from geoloc.indexing.run import IndexConfig, index_photos
    from geoloc.review.session import locate_for_review

    root = tmp_path_factory.mktemp("review")
    photos, queries = root / "photos", root / "queries"
    photos.mkdir()
    queries.mkdir()
    for i in range(1, 17, 2):
        shutil.copy(lund_dir / f"{i:02d}.jpg", photos / f"{i:02d}.jpg")
    for i in (2, 4, 6, 8):
        shutil.copy(lund_dir / f"{i:02d}.jpg", queries / f"{i:02d}.jpg")
    shutil.copy(data_dir / "sacre_coeur" / "02928139_3448003521.jpg", queries / HOSTILE)
    subprocess.run([EXIFTOOL, "-q", "-gps:all=", "-overwrite_original", *map(str, sorted(queries.iterdir()))],
                   check=True)
    index_photos([photos], root / "db", IndexConfig(model="lite0-vlad", max_side=224, device="cpu"))
    results = locate_for_review(root / "db", sorted(queries.iterdir()), False)
    return root, results


def fresh_copy(site, tmp_path) -> tuple[Path, list]:
    """The queries copied again (a test writes into them) and the answers pointed at the copies."""
    import copy

    root, results = site
    folder = tmp_path / "queries"
    shutil.copytree(root / "queries", folder)
    for photo in folder.iterdir():
        photo.chmod(0o644)  # the shared photos are read-only, and so their copies
    db = tmp_path / "db"
    shutil.copytree(root / "db", db)
    moved = []
    for r in results:
        r = copy.copy(r)
        r.query = folder / Path(r.query).name
        moved.append(r)
    return db, moved


class Served:
    """A review server in a thread, and plain HTTP requests to it."""

    def __init__(self, db: Path, results: list, tmp_path: Path, again: bool = False):
        from geoloc.review.decisions import Decisions
        from geoloc.review.server import ReviewServer
        from geoloc.review.session import ReviewSet
        from geoloc.review.thumbs import ThumbCache

        self.decisions = Decisions(db)
        self.review = ReviewSet(results, self.decisions, again=again)
        self.server = ReviewServer(self.review, 0, thumbs=ThumbCache(tmp_path / "thumbs"), tiles=None)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.host = f"127.0.0.1:{self.server.port}"

    def request(self, method: str, path: str, body=None, headers=None, token: bool = True):
        conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=30)
        sep = "&" if "?" in path else "?"
        if token and method == "GET":
            path += f"{sep}token={self.server.token}"
        head = {"Host": self.host}
        if method == "POST":
            head["Content-Type"] = "application/json"
            if token:
                head["X-Geoloc-Token"] = self.server.token
        head.update(headers or {})
        conn.request(method, path, body=None if body is None else json.dumps(body).encode(), headers=head)
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        return resp.status, data

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)
        self.decisions.close()


@pytest.fixture
def served(site, tmp_path):
    db, results = fresh_copy(site, tmp_path)
    s = Served(db, results, tmp_path)
    yield s
    s.close()


def test_the_server_listens_on_127_0_0_1_only_and_answers_with_the_token(served):
    assert served.server.server_address[0] == "127.0.0.1"
    status, body = served.request("GET", "/")
    assert status == 200 and b"geoloc review" in body
    status, body = served.request("GET", "/api/items")
    items = json.loads(body)["items"]
    assert status == 200 and len(items) == 5
    assert {i["name"] for i in items} == {"02.jpg", "04.jpg", "06.jpg", "08.jpg", HOSTILE}
    status, body = served.request("GET", f"/api/thumb/{items[0]['id']}")
    assert status == 200 and body[:2] == b"\xff\xd8"


@pytest.mark.parametrize("path", ["/", "/api/items", "/api/state", "/api/thumb/0", "/assets/review.js"])
def test_every_request_without_the_right_token_is_refused(served, path):
    assert served.request("GET", path, token=False)[0] == 403
    assert served.request("GET", path + "?token=wrong", token=False)[0] == 403
    assert served.request("POST", "/api/decide", {"ids": [0], "decision": "accepted"}, token=False)[0] == 403


def test_another_host_name_is_refused_against_dns_rebinding(served):
    for host in ("evil.example:%d" % served.server.port, "127.0.0.1", "localhost.evil.example"):
        assert served.request("GET", "/api/items", headers={"Host": host})[0] == 403
    assert served.request("GET", "/api/items", headers={"Host": f"localhost:{served.server.port}"})[0] == 200


def test_state_changes_only_by_a_json_post_with_the_token_in_a_header(served):
    decide = {"ids": [0], "decision": "accepted"}
    # A form another page could post: not JSON, no custom header.
    assert served.request("POST", "/api/decide", decide, headers={"Content-Type": "text/plain"})[0] == 415
    # The token in the URL of a POST is not enough (a cross-site form can put it there).
    status, _ = served.request("POST", f"/api/decide?token={served.server.token}", decide, token=False)
    assert status == 403
    # From another site's page, even with the token.
    assert served.request("POST", "/api/decide", decide, headers={"Origin": "http://evil.example"})[0] == 403
    # A GET changes nothing.
    assert served.request("GET", "/api/decide?ids=0&decision=accepted")[0] == 404
    assert served.review.counts()["accepted"] == 0
    assert served.request("POST", "/api/decide", decide)[0] == 200
    assert served.review.counts()["accepted"] == 1


def test_only_photos_of_the_review_are_served_by_id_never_by_path(served):
    for path in ("/api/thumb/99", "/api/thumb/0/99", "/api/thumb/..%2f..%2fetc%2fpasswd", "/etc/passwd",
                 "/assets/../../../etc/passwd", "/assets/..%2f__init__.py", "/api/matches/0/99"):
        assert served.request("GET", path)[0] == 404, path
    assert served.request("POST", "/api/decide", {"ids": [0], "decision": "corrected", "lat": 91, "lon": 0})[0] == 400
    assert served.request("POST", "/api/decide", {"ids": [0], "decision": "delete"})[0] == 400


def test_responses_forbid_inline_script_framing_and_referrers(served):
    conn = http.client.HTTPConnection("127.0.0.1", served.server.port, timeout=10)
    conn.request("GET", f"/?token={served.server.token}", headers={"Host": served.host})
    resp = conn.getresponse()
    resp.read()
    conn.close()
    assert "script-src 'self'" in resp.getheader("Content-Security-Policy")
    assert "'unsafe-inline'" not in resp.getheader("Content-Security-Policy").split("script-src")[1].split(";")[0]
    assert resp.getheader("Referrer-Policy") == "no-referrer"  # the token never leaves in a Referer
    assert resp.getheader("X-Frame-Options") == "DENY"


def test_decisions_are_kept_and_a_rejected_or_written_photo_is_not_proposed_again(site, tmp_path):
    from geoloc.review.decisions import Decisions
    from geoloc.review.session import ReviewSet

    db, results = fresh_copy(site, tmp_path)
    with Decisions(db) as d:
        review = ReviewSet(results, d)
        review.decide([0], "rejected")
        review.decide([1], "corrected", 55.7, 13.19)
        review.decide([2], "accepted")
    with Decisions(db) as d:  # the review left and resumed
        review = ReviewSet(results, d)
        assert review.left_out == 1 and len(review.items) == 4
        assert review.counts() == {"total": 4, "open": 2, "accepted": 1, "rejected": 0, "corrected": 1, "applied": 0}
        assert len(ReviewSet(results, d, again=True).items) == 5
    (db / "review" / "decisions.sqlite").unlink()
    (db / "review" / "decisions.sqlite").write_text("my notes")
    with pytest.raises(Exception, match="left as it is"):
        Decisions(db)
    assert (db / "review" / "decisions.sqlite").read_text() == "my notes"


def test_the_cli_prints_the_url_with_its_token_and_stops_on_ctrl_c(site, tmp_path, monkeypatch):
    from geoloc.review.server import ReviewServer

    db, results = fresh_copy(site, tmp_path)
    seen = {}

    def interrupted(self, poll_interval=0.5):
        seen["url"] = self.url
        raise KeyboardInterrupt

    monkeypatch.setattr(ReviewServer, "serve_forever", interrupted)
    result = CliRunner().invoke(app, ["review", str(tmp_path / "queries" / "02.jpg"), "--db", str(db),
                                      "--no-browser"])
    assert result.exit_code == 0, result.output
    assert f"review page: {seen['url']}" in result.output
    assert seen["url"].startswith("http://127.0.0.1:") and "?token=" in seen["url"]
    assert "review server stopped" in result.output
    bad = CliRunner().invoke(app, ["review", "--db", str(db)])
    assert bad.exit_code == 2 and "--unlocated" in bad.output


def test_apply_writes_sidecars_only_for_what_was_accepted_and_marks_it_written(served, tmp_path):
    items = {i["name"]: i["id"] for i in json.loads(served.request("GET", "/api/items")[1])["items"]}
    served.request("POST", "/api/decide", {"ids": [items["02.jpg"]], "decision": "accepted"})
    served.request("POST", "/api/decide", {"ids": [items["04.jpg"]], "decision": "rejected"})
    status, body = served.request("POST", "/api/apply", {"exif": False, "xmp": True})
    report = json.loads(body)
    assert status == 200 and report["written"] == [] and len(report["sidecars"]) == 1, report
    folder = tmp_path / "queries"
    assert (folder / "02.xmp").exists() and not (folder / "04.xmp").exists()
    assert report["counts"]["applied"] == 1
    # Applied once: a second Apply writes nothing again.
    assert json.loads(served.request("POST", "/api/apply", {"exif": False, "xmp": True})[1])["sidecars"] == []


def test_a_port_in_use_is_a_usage_error(site, tmp_path):
    import socket

    db, _ = fresh_copy(site, tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(app, ["review", str(tmp_path / "queries" / "02.jpg"), "--db", str(db),
                                          "--no-browser", "--port", str(port)])
    assert result.exit_code == 2 and f"--port {port}" in result.output


def test_the_thumbnail_cache_stays_under_its_bound(site, tmp_path):
    from geoloc.review.thumbs import ThumbCache

    root, _ = site
    photos = sorted((root / "photos").glob("*.jpg"))
    cache = ThumbCache(tmp_path / "thumbs", max_bytes=30_000, side=160)
    for p in photos:
        assert cache.get(str(p))[:2] == b"\xff\xd8"
    kept = sum(f.stat().st_size for f in (tmp_path / "thumbs").iterdir())
    assert 0 < kept <= 30_000
    assert cache.get(str(root / "no-such.jpg")) is None


# ------------------------------------------------------------------------------------------------
# In a real browser


@pytest.fixture(scope="module")
def chromium():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no system Chromium at {CHROMIUM} (Debian: apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield browser
        browser.close()


def offline_page(browser, artifacts: Path | None = None):
    """A page that reaches nothing but 127.0.0.1 (no map tiles: the plain background) and
    records every script error and alert."""
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(("http://127.0.0.1", "file:", "data:"))
               else route.abort())
    page.errors, page.alerts = [], []
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.on("dialog", lambda d: (page.alerts.append(d.message), d.dismiss()))
    return page


def ready(page) -> None:
    """Wait for the page's first rows, saying what went wrong when they never come."""
    try:
        page.wait_for_selector("body[data-ready='1']", state="attached", timeout=15000)
    except Exception:
        raise AssertionError(f"the page never got ready: errors {page.errors}, "
                             f"status {page.locator('#status').text_content()!r}") from None


def exif_gps(path: Path) -> tuple[float, float] | None:
    out = subprocess.run([EXIFTOOL, "-j", "-n", "-GPSLatitude", "-GPSLongitude", str(path)],
                         capture_output=True, text=True, check=True)
    tags = json.loads(out.stdout)[0]
    return (tags["GPSLatitude"], tags["GPSLongitude"]) if "GPSLatitude" in tags else None


@pytest.mark.browser
def test_review_in_the_browser_accept_correct_reject_apply_and_undo(chromium, site, tmp_path, request):
    from playwright.sync_api import expect

    from geoloc.files import sha256_file

    db, results = fresh_copy(site, tmp_path)
    before = {p.name: sha256_file(p) for p in (tmp_path / "queries").iterdir()}
    s = Served(db, results, tmp_path)
    page = offline_page(chromium)
    try:
        page.goto(s.server.url)
        ready(page)
        rows = page.locator("#rows .row")
        assert rows.count() == 5
        names = [rows.nth(i).locator(".name").text_content() for i in range(5)]
        assert HOSTILE in names  # shown as text, not run
        # Row 1: accept with the keyboard (the page then moves to the next photo).
        page.locator("#rows .row", has_text="02.jpg").click()
        page.keyboard.press("a")
        expect(page.locator(".row.current .name")).to_have_text("04.jpg")
        # Row 2: correct it by dragging the pin 80 px east.
        pin = page.locator(".leaflet-marker-draggable")
        box = pin.bounding_box()
        x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] - 4
        page.mouse.move(x, y)
        page.mouse.down()
        page.mouse.move(x + 40, y, steps=5)
        page.mouse.move(x + 80, y, steps=5)
        page.mouse.up()
        expect(page.locator(".row.current .decision")).to_have_text("corrected")
        # Row 3: reject with the button.
        page.locator("#rows .row", has_text="06.jpg").click()
        page.locator("#reject").click()
        expect(page.locator(".d-rejected")).to_have_count(1)
        shot = page.screenshot(path=str(tmp_path / "review.png"))
        assert shot
        page.locator("#apply").click()
        page.wait_for_selector("body[data-applied]")
        assert page.locator("body").get_attribute("data-applied") == "2", page.locator("#status").text_content()
        assert page.errors == [] and page.alerts == []
    finally:
        page.close()
        s.close()
    folder = tmp_path / "queries"
    accepted = next(r for r in results if r.query.name == "02.jpg").estimate
    got = exif_gps(folder / "02.jpg")
    assert got == pytest.approx((accepted.lat, accepted.lon), abs=1e-6)
    corrected = exif_gps(folder / "04.jpg")
    first = next(r for r in results if r.query.name == "04.jpg").estimate
    assert corrected is not None and corrected[1] > first.lon + 1e-5  # moved east, as dragged
    # The rejected photo and the one left open: not a byte changed.
    assert sha256_file(folder / "06.jpg") == before["06.jpg"] and sha256_file(folder / "08.jpg") == before["08.jpg"]
    undo = CliRunner().invoke(app, ["undo-exif"])
    assert undo.exit_code == 0, undo.output
    assert exif_gps(folder / "02.jpg") is None and exif_gps(folder / "04.jpg") is None
    print(f"review screenshot: {tmp_path / 'review.png'}")


_MAP_VIEW = """() => {
  let map = null;
  for (const k of Object.keys(window)) { try { if (window[k] instanceof L.Map) { map = window[k]; } } catch (e) {} }
  const b = map.getBounds(), circles = [], shown = [];
  map.eachLayer(l => { if (l instanceof L.Circle) { circles.push([l.getLatLng().lat, l.getLatLng().lng]); } });
  document.querySelectorAll('.leaflet-marker-icon').forEach(el => {
    if (getComputedStyle(el).display !== 'none') { const r = el.getBoundingClientRect(); shown.push([r.left, r.top, r.right, r.bottom]); }
  });
  return {bounds: [b.getSouth(), b.getWest(), b.getNorth(), b.getEast()], circles: circles, shown: shown,
          clusters: document.querySelectorAll('.geoloc-cluster').length,
          layers: Array.from(document.querySelectorAll('.leaflet-control-layers-overlays label')).map(
            l => [l.textContent.trim(), l.querySelector('input').checked])};
}"""


@pytest.mark.browser
def test_the_static_map_opens_on_the_sure_estimates_with_no_low_circle_and_no_overlapping_badge(
        chromium, site, tmp_path):
    root, results = site
    out = tmp_path / "map.html"
    result = CliRunner().invoke(app, ["locate", *[str(r.query) for r in results], "--db", str(root / "db"),
                                      "--top-k", "5", "--map", str(out)])
    assert result.exit_code == 0, result.output
    page = offline_page(chromium)
    try:
        page.goto(out.as_uri())
        page.wait_for_selector(".leaflet-marker-icon", state="attached")
        page.wait_for_timeout(300)  # the clusters are drawn once the view is set
        view = page.evaluate(_MAP_VIEW)
        shot = tmp_path / "map.png"
        page.screenshot(path=str(shot))
        page.locator(".geoloc-results th", has_text="confidence").click()
        order = page.locator(".geoloc-results tbody tr td:nth-child(6)").all_text_contents()
        assert page.errors == [] and page.alerts == []
    finally:
        page.close()
    sure = [r.estimate for r in results if r.estimate.confidence in ("high", "medium")]
    low = [r.estimate for r in results if r.estimate.confidence == "low"]
    assert sure and low  # the case the map is for: good estimates and a far-off guess
    south, west, north, east = view["bounds"]
    for e in sure:
        assert south <= e.lat <= north and west <= e.lon <= east
    # The low guess (a Paris photo against Lund: 1 km wide) did not set the zoom.
    assert (north - south) * 111_195 < min(e.radius_m for e in low)
    assert len(view["circles"]) == len(sure)  # the low guess's circle is not drawn
    assert [name for name, on in view["layers"] if not on] == [f"low confidence ({len(low)}): not shown at first"]
    assert view["clusters"] >= 1  # the Lund marks stand close together: gathered, with their count
    boxes = view["shown"]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (a, b)
    assert order == sorted(order, key=["high", "medium", "low"].index)
    print(f"map screenshot: {shot}")
