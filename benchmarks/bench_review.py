"""`geoloc review` with thousands of photos open at once: how soon the page is usable.

Builds a review of N answers (default 5,000) on real photos: N hard links to a copy of the Lund street
photos in ``../shared/data/lund/images`` (each link its own photo to the server: its own id, its
own cached thumbnail), spread over 50 folders and 20 days, each with an estimate near the photo's
own position (confidence high, medium and low in turn) and five candidates, the first two
verified. Serves it with the real server, in a thread, and opens the page in the system
Chromium (headless, Playwright), twice: with the thumbnail cache empty, then warm.

Prints: building the review set, the server's start, the first paint (the rows on screen: the
page's ``geoloc-rows`` mark, from navigation start), the first screenful of thumbnails
loaded, the page's first request for rows (size, time), a later page under a filter, and
"accept every high" over the whole set.

    python benchmarks/bench_review.py [--photos 5000] [--screenshot docs/review.png]

``--screenshot`` also runs a small real review (the Lund photos indexed, four of them with
their GPS taken out located against the others), accepts one, opens the matched points of the
next, and saves the page as a PNG (the screenshot in docs/review.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LUND = ROOT.parent / "shared" / "data" / "lund" / "images"
CHROMIUM = "/usr/bin/chromium"


def synthetic_results(folder: Path, n: int) -> list:
    from geoloc.locating.estimate import Estimate
    from geoloc.locating.results import Candidate, LocateResult
    from geoloc.photos import read_meta

    # Hard links to one copy of each photo: every link is a photo of its own to the server (its
    # resolved path is its own), at the cost of one copy.
    originals = folder / "originals"
    originals.mkdir(parents=True)
    sources = []
    for p in sorted(LUND.glob("*.jpg")):
        shutil.copy(p, originals / p.name)
        sources.append(originals / p.name)
    where = {p: read_meta(p) for p in sources}
    levels = ("high", "medium", "low")
    results = []
    for i in range(n):
        src = sources[i % len(sources)]
        sub = folder / f"roll{i % 50:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        link = sub / f"IMG_{i:05d}.jpg"
        os.link(src, link)
        m = where[src]
        cands = []
        for k in range(5):
            c = sources[(i + k + 1) % len(sources)]
            cm = where[c]
            cands.append(Candidate(k + 1, c, cm.lat, cm.lon, 0.6 - 0.03 * k, 12.0 * k,
                                   inliers=60 - 10 * k if k < 2 else None))
        e = Estimate(m.lat + 1e-4, m.lon - 1e-4, 15.0 + i % 40, support=4, agreement=0.8, considered=5,
                     confidence=levels[i % 3], verification="verified")
        results.append(LocateResult(link, e, cands, None, taken_at=f"2024-05-{1 + i % 20:02d}T12:00:00"))
    return results


def serve(db: Path, results: list, thumbs: Path):
    from geoloc.review.decisions import Decisions
    from geoloc.review.server import ReviewServer
    from geoloc.review.session import ReviewSet
    from geoloc.review.thumbs import ThumbCache

    t = time.perf_counter()
    decisions = Decisions(db)
    review = ReviewSet(results, decisions)
    built = time.perf_counter() - t
    t = time.perf_counter()
    server = ReviewServer(review, 0, thumbs=ThumbCache(thumbs), tiles=None)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, decisions, built, time.perf_counter() - t


def open_page(browser, url: str) -> dict:
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.route("**/*", lambda r: r.continue_() if r.request.url.startswith("http://127.0.0.1") else r.abort())
    t = time.perf_counter()
    page.goto(url)
    page.wait_for_selector("body[data-ready='1']", state="attached", timeout=60000)
    rows_s = time.perf_counter() - t
    # The first screenful of thumbnails: every row image inside the list's visible height.
    page.wait_for_function("""() => {
        const box = document.getElementById('rows').getBoundingClientRect();
        return Array.from(document.querySelectorAll('#rows img')).filter(
            i => i.getBoundingClientRect().top < box.bottom).every(i => i.complete && i.naturalWidth > 0);
    }""", timeout=60000)
    thumbs_s = time.perf_counter() - t
    mark = page.evaluate("performance.getEntriesByName('geoloc-rows')[0].startTime")
    rows = page.locator("#rows .row").count()
    page.close()
    return {"paint_ms": mark, "rows_s": rows_s, "thumbs_s": thumbs_s, "rows": rows}


def timed_get(server, path: str) -> tuple[float, int]:
    req = urllib.request.Request(f"http://127.0.0.1:{server.port}{path}&token={server.token}")
    t = time.perf_counter()
    with urllib.request.urlopen(req) as resp:
        body = resp.read()
    return time.perf_counter() - t, len(body)


def timed_post(server, path: str, body: dict) -> tuple[float, dict]:
    req = urllib.request.Request(f"http://127.0.0.1:{server.port}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json", "X-Geoloc-Token": server.token})
    t = time.perf_counter()
    with urllib.request.urlopen(req) as resp:
        out = json.loads(resp.read())
    return time.perf_counter() - t, out


def real_screenshot(browser, work: Path, out: Path) -> None:
    from geoloc.indexing.run import IndexConfig, index_photos
    from geoloc.review.session import locate_for_review

    photos, queries = work / "photos", work / "queries"
    photos.mkdir()
    queries.mkdir()
    for i in range(1, 30, 2):
        shutil.copy(LUND / f"{i:02d}.jpg", photos)
    for i in (2, 10, 18, 26):
        shutil.copy(LUND / f"{i:02d}.jpg", queries)
    for p in queries.iterdir():
        p.chmod(0o644)
    subprocess.run(["exiftool", "-q", "-gps:all=", "-overwrite_original", str(queries)], check=True)
    index_photos([photos], work / "db", IndexConfig(model="lite0-vlad", max_side=320, device="cpu"))
    results = locate_for_review(work / "db", sorted(queries.iterdir()), False)
    server, decisions, _, _ = serve(work / "db", results, work / "thumbs")
    page = browser.new_page(viewport={"width": 1200, "height": 1000})
    page.route("**/*", lambda r: r.continue_() if r.request.url.startswith("http://127.0.0.1") else r.abort())
    page.goto(server.url)
    page.wait_for_selector("body[data-ready='1']", state="attached")
    page.keyboard.press("a")
    page.wait_for_function("() => /consistent/.test(document.getElementById('matches-title').textContent)",
                           timeout=60000)
    page.wait_for_timeout(500)
    page.screenshot(path=str(work / "review.png"))
    page.close()
    server.shutdown()
    decisions.close()
    from PIL import Image

    image = Image.open(work / "review.png").convert("RGB")
    image = image.resize((900, round(image.height * 900 / image.width)), Image.LANCZOS)
    image.quantize(colors=192).save(out, optimize=True)
    print(f"screenshot: {out} ({out.stat().st_size // 1024} KiB)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", type=int, default=5000)
    ap.add_argument("--screenshot", type=Path, default=None)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.environ["GEOLOC_HOME"] = str(work / "home")
        (work / "db").mkdir()
        t = time.perf_counter()
        results = synthetic_results(work / "photos", args.photos)
        print(f"{args.photos} answers on real photos made in {time.perf_counter() - t:.2f} s")
        server, decisions, built, started = serve(work / "db", results, work / "thumbs")
        print(f"review set built in {built * 1000:.0f} ms, server started in {started * 1000:.0f} ms")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            for label in ("cold thumbnail cache", "warm thumbnail cache"):
                m = open_page(browser, server.url)
                print(f"{label}: first paint (rows on screen) {m['paint_ms']:.0f} ms after navigation start; "
                      f"rows ready {m['rows_s']:.2f} s, first screenful of thumbnails {m['thumbs_s']:.2f} s "
                      f"({m['rows']} rows a page)")
            s, size = timed_get(server, "/api/items?offset=0&limit=50")
            print(f"first page of rows: {size / 1024:.0f} KiB in {s * 1000:.0f} ms")
            s, size = timed_get(server, "/api/items?offset=20&limit=50&confidence=medium&folder=" +
                                urllib.request.quote(str(work / "photos" / "roll07")))
            print(f"a page under a confidence and folder filter: {size / 1024:.0f} KiB in {s * 1000:.0f} ms")
            s, out = timed_post(server, "/api/bulk", {"decision": "accepted", "filter": {"confidence": "high"}})
            print(f"accept every high: {out['changed']} decisions kept in {s * 1000:.0f} ms")
            server.shutdown()
            decisions.close()
            if args.screenshot is not None:
                shot = work / "shot"
                shot.mkdir()
                real_screenshot(browser, shot, args.screenshot.resolve())
            browser.close()


if __name__ == "__main__":
    main()
