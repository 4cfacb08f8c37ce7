"""The HTML map as a file: what it loads, what it draws, and that names cannot inject script."""

from __future__ import annotations

import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest

from geoloc.errors import GeolocError
from geoloc.locating.estimate import Estimate, estimate_position
from geoloc.locating.results import Candidate, LocateResult
from geoloc.outputs.mappage import LEAFLET_VERSION, esc, leaflet_assets
from geoloc.outputs.mapview import MapConfig, build_map, save_map

XSS_DIR = '"><script>alert(1)<'  # with the file name below: "><script>alert(1)</script>.jpg
XSS_FILE = "script>.jpg"
XSS_NAME = "<img src=x onerror=alert(2)>${alert(3)}`\\u.jpg"


def own(page: str) -> str:
    """The page without the Leaflet it inlines: what geoloc itself wrote into it."""
    js, css = leaflet_assets()
    assert page.count(js) == 1 and page.count(css) == 1
    return page.replace(js, "").replace(css, "")


def _result(query: Path, photos: list[Path], gps=True) -> LocateResult:
    lat0, lon0 = 55.6982, 13.1953
    cands = [
        Candidate(i + 1, p, lat0 + 4e-5 * i, lon0 + 3e-5 * i, 0.9 - 0.05 * i) for i, p in enumerate(photos)
    ]
    est = estimate_position([c.lat for c in cands], [c.lon for c in cands], [c.score for c in cands])
    for c in cands:
        c.distance_m = 1.0
    return LocateResult(query, est, cands, (lat0 + 1e-5, lon0) if gps else None)


@pytest.fixture(scope="module")
def photos(tmp_path_factory, lund_dir) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("mapphotos")
    (root / XSS_DIR).mkdir()
    out = {
        "xss_path": root / XSS_DIR / XSS_FILE,
        "xss_name": root / XSS_NAME,
        "plain": root / "plain.jpg",
    }
    for i, p in enumerate(out.values()):
        shutil.copy(lund_dir / f"{2 * i + 1:02d}.jpg", p)
    return out


def test_map_draws_every_marker_once(tmp_path, photos):
    a = _result(photos["plain"], [photos["xss_path"], photos["xss_name"]])
    b = _result(photos["xss_name"], [photos["plain"]], gps=False)
    page = own(save_map([a, b, LocateResult(Path("bad.jpg"), error="unreadable")], tmp_path / "m.html").read_text())
    # 2 + 1 candidates, 2 estimates, 1 true position.
    assert len(re.findall(r"= L\.marker\(", page)) == 6
    assert len(re.findall(r"= L\.circle\(", page)) == 2
    assert page.count("L.control.layers(") == 1
    assert "fitBounds(" in page
    assert page.count("data:image/jpeg;base64,") == 3  # one thumbnail per photo, reused


class _Assets(HTMLParser):
    """Everything in a page that a browser would fetch: scripts, stylesheets, images, frames,
    and the url(...) and @import of its style sheets."""

    def __init__(self):
        super().__init__()
        self.fetched: list[str] = []
        self.inline_scripts = 0
        self._in: str | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for name in ("src", "href", "srcset", "data", "poster"):
            value = attrs.get(name)
            if value is not None and not (tag == "a" and name == "href"):  # a link is not fetched
                self.fetched.append(f"<{tag} {name}={value}>")
        if tag == "link":
            self.fetched.append(f"<link rel={attrs.get('rel')}>")
        if tag == "script":
            self.inline_scripts += "src" not in attrs
        self._in = tag

    def handle_data(self, data):
        if self._in == "style":
            for url in re.findall(r"url\(\s*['\"]?([^'\")]+)", data):
                if not url.startswith(("data:", "#")):
                    self.fetched.append(f"css url({url})")
            if "@import" in data:
                self.fetched.append("css @import")


def test_the_page_fetches_nothing_but_map_tiles(tmp_path, photos):
    """Why: a map is opened later, often offline, often from an e-mail: Leaflet, its CSS and
    its icons are in the file, and the only address the page asks for is the tile server's."""
    r = _result(photos["plain"], [photos["xss_path"], photos["xss_name"]])
    page = save_map([r, r], tmp_path / "m.html").read_text()
    assets = _Assets()
    assets.feed(page)
    assert assets.fetched == []
    assert assets.inline_scripts >= 2
    # The URLs geoloc's own part of the page holds: the tile template, and the attribution link.
    urls = set(re.findall(r"https?://[^\s\"'<>)\\]+", own(page)))
    assert urls == {"https://tile.openstreetmap.org/{z}/{x}/{y}.png", "https://www.openstreetmap.org/copyright"}
    for library in ("jquery", "bootstrap", "awesome", "font-awesome", "cdn."):
        assert library not in page.lower(), library


def test_the_shipped_leaflet_is_the_documented_release_with_its_licence():
    from importlib import resources

    folder = resources.files("geoloc") / "assets" / "leaflet"
    assert f"Leaflet {LEAFLET_VERSION}," in (folder / "leaflet.js").read_text()[:200]
    assert "BSD 2-Clause" in (folder / "LICENSE").read_text()
    assert f"Leaflet {LEAFLET_VERSION}" in (folder / "README.md").read_text()
    js, css = leaflet_assets()
    assert "</script" not in js.lower() and "</style" not in css.lower()
    assert "url(images/" not in css and css.count("url(data:image/png;base64,") == 3


def test_the_package_installs_the_leaflet_files():
    """pyproject's package data names every shipped file, so a wheel carries them all."""
    import fnmatch

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    root = Path(__file__).resolve().parents[1]
    globs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["geoloc"]
    shipped = [p.relative_to(root / "geoloc").as_posix() for p in (root / "geoloc" / "assets").rglob("*") if p.is_file()]
    assert len(shipped) >= 9
    for name in shipped:
        assert any(fnmatch.fnmatch(name, g) for g in globs), name


def test_the_page_lists_every_answer_in_a_table(tmp_path, photos):
    """Why: the answers must be readable without the map (no JavaScript, a printout, a screen
    reader): one row per query, in order, its position, radius, confidence and top candidate."""
    a = _result(photos["plain"], [photos["xss_path"], photos["xss_name"]])
    b = _result(photos["xss_name"], [photos["plain"]], gps=False)
    # Absolute, under no folder of the others whatever the working directory (a relative name
    # would share /tmp with them when the checkout is there).
    bad = LocateResult(Path("/geoloc-elsewhere/<b>bad</b>.jpg"), error="<b>bad</b>.jpg: not an image")
    page = own(save_map([a, bad, b], tmp_path / "m.html").read_text())
    table = page[page.index('<div class="geoloc-results">'):]
    table = table[:table.index("</table>")]
    rows = re.findall(r"<tr[ >].*?</tr>", table.split("<tbody>")[1])
    assert len(rows) == 3
    assert f"{a.estimate.lat:.6f}" in rows[0] and f"{a.estimate.lon:.6f}" in rows[0]
    assert "high" in rows[0] and "score 0.900" in rows[0] and esc(photos["xss_path"].as_posix()) in rows[0]
    assert "not located" in rows[1] and "&lt;b&gt;bad&lt;/b&gt;.jpg" in rows[1] and "<b>bad" not in rows[1]
    # No folder shared by every query ("bad.jpg" is elsewhere): full paths, as in the terminal.
    assert esc(photos["xss_name"].as_posix()) in rows[2] and esc(photos["plain"].as_posix()) in rows[2]
    # Queries in one folder: named relative to it, the folder said once, as the terminal does.
    page = own(save_map([a, b], tmp_path / "two.html").read_text())
    table = page[page.index('<div class="geoloc-results">'):]
    assert f'<td class="path">{esc(photos["xss_name"].name)}</td>' in table
    assert f'photos in <span class="path">{esc(photos["plain"].parent.as_posix())}</span>' in table


def test_relative_paths_are_relative_to_the_map_folder(tmp_path, photos):
    r = _result(photos["plain"], [photos["xss_path"]])
    folder = photos["plain"].parent
    page = own(save_map([r], tmp_path / "m.html", MapConfig(relative_to=folder)).read_text())
    assert str(folder) not in page and str(folder).replace("/", "\\/") not in page
    assert esc("plain.jpg") in page and json.dumps(esc(f"{XSS_DIR}/{XSS_FILE}"))[1:-1].replace(
        "<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026") in page


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, list]] = []
        self.text = ""

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, attrs))

    def handle_data(self, data):
        self.text += data


def test_user_strings_are_escaped(tmp_path, photos):
    r = _result(photos["xss_name"], [photos["xss_path"], photos["xss_name"]])
    page = own(save_map([r, r], tmp_path / "m.html").read_text())
    assert "<script>alert(1)</script>" not in page and "<img" not in page
    # Every popup/tooltip/layer name is a JSON string literal (never a template literal, where
    # ${...} would run) holding HTML whose only tags are ours.
    literals = re.findall(r'(?:bind(?:Popup|Tooltip)\(|geolocPopup\()("(?:[^"\\]|\\.)*")', page)
    literals += re.findall(r'^\s*("(?:[^"\\]|\\.)*") : feature_group_', page, flags=re.M)
    assert len(literals) >= 10
    texts = ""
    for literal in literals:
        parser = _Tags()
        parser.feed(json.loads(literal))
        for tag, attrs in parser.tags:
            assert tag in {"div", "b", "br", "span"}, tag
            assert all(not name.startswith("on") and name != "src" for name, _ in attrs)
        texts += parser.text
    assert photos["xss_path"].as_posix() in texts  # shown literally, as the text it is
    assert XSS_NAME in texts
    for call in re.findall(r"\.bind(?:Popup|Tooltip)\((.{0,40})", page):
        assert call.startswith('"') or call.startswith('function () { return geolocPopup("')


def test_esc():
    assert esc('"><script>') == "&quot;&gt;&lt;script&gt;"


def test_nothing_to_map_is_an_error(tmp_path):
    with pytest.raises(GeolocError, match="nothing to map"):
        save_map([LocateResult(Path("a.jpg"), error="x")], tmp_path / "m.html")


def test_missing_folder_is_a_one_line_error(tmp_path, photos):
    r = _result(photos["plain"], [photos["plain"]])
    with pytest.raises(GeolocError, match="does not exist"):
        save_map([r], tmp_path / "nope" / "m.html")


def test_thumbnails_can_be_turned_off_and_missing_photos_just_lack_one(tmp_path, photos):
    r = _result(Path("/gone/q.jpg"), [Path("/gone/c.jpg"), photos["plain"]])
    page = save_map([r], tmp_path / "a.html").read_text()
    assert page.count("data:image/jpeg;base64,") == 1
    page = save_map([r], tmp_path / "b.html", MapConfig(thumbnail_px=0)).read_text()
    assert "data:image/jpeg" not in page


def test_bounds_cover_the_uncertainty_circle(photos):
    r = LocateResult(Path("q.jpg"), Estimate(55.0, 13.0, 1000.0, 1, 1.0),
                     [Candidate(1, photos["plain"], 55.0, 13.0, 0.5, 0.0)])
    fmap = build_map([r], MapConfig(thumbnail_px=0))
    page = own(fmap.get_root().render())
    bounds = re.search(r"fitBounds\(\s*\[\[([-\d.]+),\s*([-\d.]+)\],\s*\[([-\d.]+),\s*([-\d.]+)\]\]", page)
    south, west, north, east = map(float, bounds.groups())
    assert north - south == pytest.approx(2 * 1000 / 111_195, rel=0.01)


def test_legend_numbered_badges_and_doubtful_estimates(tmp_path):
    """Why: with several queries the badges and popups must say which query they belong to, a
    doubtful estimate must look doubtful, and a key must explain the symbols."""
    from geoloc.locating.estimate import assess_confidence

    a = _result(Path("a.jpg"), [Path("x1.jpg"), Path("x2.jpg")])
    b = _result(Path("b.jpg"), [Path("x3.jpg")], gps=False)
    assess_confidence(b.estimate, 0.1, 0.3)  # weak match: low confidence
    page = save_map([a, b], tmp_path / "m.html").read_text()
    assert 'class="geoloc-legend"' in page and "database photo, by rank" in page
    for badge in ("est 1", "est 2?", "GPS 1"):  # icon HTML sits JSON-encoded in the script
        assert f"\\u003e{badge}\\u003c" in page, badge
    assert "#1 for a.jpg" in page and "#1 for b.jpg" in page
    assert "confidence: \\u003cb\\u003elow" in page and "weak match" in page, page
    assert page.count('"dashArray": "6 6"') == 1  # only the doubtful circle is dashed

    single = save_map([a], tmp_path / "one.html").read_text()
    assert "\\u003eest\\u003c" in single and "#1 for" not in single
