"""The review page's server: the standard library's ``ThreadingHTTPServer`` on 127.0.0.1.

Why the standard library: the page needs a dozen routes, JSON and a few JPEGs for one user, and
``http.server`` serves that with nothing to install beside geoloc, nothing to keep up to date,
and every security check below in plain sight (a framework's defaults would have to be audited
and pinned instead).

A server on the user's machine is reachable by every web page the user has open, so:

* it listens on 127.0.0.1 only, on a free port unless ``--port`` names one;
* every request carries the session's random token (the URL's ``?token=``, or for a POST the
  ``X-Geoloc-Token`` header), compared in constant time;
* the ``Host`` header must name this server (``127.0.0.1:PORT`` or ``localhost:PORT``): a
  rebinding DNS name that points at 127.0.0.1 is refused;
* what changes state is a POST with a JSON body and the token in a header, which another page
  cannot send without a CORS preflight this server never answers (no CSRF), and an ``Origin``
  other than this server's is refused;
* photos are served by their id in the review set, never by a path from the request;
* the page puts every name and EXIF text into the document as text, and a Content-Security-Policy
  allows no inline script and nothing from elsewhere but the map tiles.
"""

from __future__ import annotations

import hmac
import json
import re
import secrets
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from urllib.parse import parse_qs, urlsplit

from geoloc.review.session import ReviewSet, item_json
from geoloc.review.thumbs import ThumbCache

HOST = "127.0.0.1"
TILES = "https://tile.openstreetmap.org/{z}/{x}/{y}.png"
#: The most rows one request returns: the page asks for a page at a time.
MAX_PAGE = 200
_MAX_BODY = 1 << 20

#: Every file the page may ask for, by its URL name: nothing else under the package is served.
_ASSETS = {
    "review.js": ("review", "review.js", "text/javascript; charset=utf-8"),
    "review.css": ("review", "review.css", "text/css; charset=utf-8"),
    "leaflet.js": ("leaflet", "leaflet.js", "text/javascript; charset=utf-8"),
    "leaflet.css": ("leaflet", "leaflet.css", "text/css; charset=utf-8"),
    **{f"images/{n}": ("leaflet", f"images/{n}", "image/png") for n in (
        "layers.png", "layers-2x.png", "marker-icon.png", "marker-icon-2x.png", "marker-shadow.png")},
}
_CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data: https://tile.openstreetmap.org; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


class ReviewServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, review: ReviewSet, port: int = 0, thumbs: ThumbCache | None = None,
                 apply_options: dict | None = None, tiles: str | None = TILES):
        super().__init__((HOST, port), _Handler)
        self.review = review
        self.thumbs = thumbs or ThumbCache()
        self.token = secrets.token_urlsafe(24)
        self.apply_options = apply_options or {}
        self.tiles = tiles
        self.port = self.server_address[1]
        self.hosts = {f"127.0.0.1:{self.port}", f"localhost:{self.port}"}
        self.origins = {f"http://{h}" for h in self.hosts}
        self.apply_lock = threading.Lock()

    def handle_error(self, request, client_address) -> None:
        """A browser that drops a thumbnail it no longer needs is no error worth a traceback."""
        import sys

        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/?token={self.token}"


def _asset(name: str) -> bytes:
    folder, rel, _ = _ASSETS[name]
    return (resources.files("geoloc") / "assets" / folder / rel).read_bytes()


class _Handler(BaseHTTPRequestHandler):
    server: ReviewServer
    server_version = "geoloc-review"
    sys_version = ""

    def log_message(self, format, *args) -> None:  # noqa: A002 - the base class's name
        pass  # the terminal shows the URL and what was written, not every thumbnail

    # -- the checks every request passes ------------------------------------------------------

    def _refused(self, post: bool) -> tuple[int, str] | None:
        srv = self.server
        if self.client_address[0] != HOST:
            return HTTPStatus.FORBIDDEN, "only this computer may connect"
        if self.headers.get("Host", "") not in srv.hosts:
            return HTTPStatus.FORBIDDEN, "unknown Host"
        origin = self.headers.get("Origin")
        if origin is not None and origin not in srv.origins:
            return HTTPStatus.FORBIDDEN, "request from another site"
        if post:
            token = self.headers.get("X-Geoloc-Token", "")
            if self.headers.get("Content-Type", "").split(";")[0].strip() != "application/json":
                return HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "JSON only"
        else:
            token = (parse_qs(urlsplit(self.path).query).get("token") or [""])[0]
        if not hmac.compare_digest(token.encode(), srv.token.encode()):
            return HTTPStatus.FORBIDDEN, "missing or wrong token"
        return None

    def _send(self, status: int, body: bytes, ctype: str, cache: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "private, max-age=3600" if cache else "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Content-Security-Policy", _CSP)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, data, status: int = HTTPStatus.OK) -> None:
        self._send(status, json.dumps(data).encode(), "application/json")

    def _error(self, status: int, message: str) -> None:
        self._send(status, message.encode(), "text/plain; charset=utf-8")

    # -- GET ----------------------------------------------------------------------------------

    def do_GET(self) -> None:  # noqa: N802 - the base class's name
        refused = self._refused(post=False)
        if refused:
            return self._error(*refused)
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        route = parts.path
        try:
            if route == "/":
                return self._page()
            if route.startswith("/assets/") and route[8:] in _ASSETS:
                return self._send(HTTPStatus.OK, self._asset_body(route[8:]), _ASSETS[route[8:]][2], cache=True)
            if route == "/api/state":
                return self._json(self._state())
            if route == "/api/items":
                return self._json(self._items(query))
            if m := re.fullmatch(r"/api/thumb/(\d+)(?:/(\d+))?", route):
                return self._thumb(int(m.group(1)), m.group(2))
            if m := re.fullmatch(r"/api/matches/(\d+)/(\d+)", route):
                return self._matches(int(m.group(1)), int(m.group(2)))
        except ValueError:
            return self._error(HTTPStatus.BAD_REQUEST, "bad request")
        return self._error(HTTPStatus.NOT_FOUND, "not found")

    do_HEAD = do_GET

    def _asset_body(self, name: str) -> bytes:
        body = _asset(name)
        if name == "leaflet.css":  # its icons are asked for with the token, like everything else
            body = re.sub(rb"url\((images/[\w.-]+\.png)\)",
                          lambda m: b"url(/assets/" + m.group(1) + b"?token=" + self.server.token.encode() + b")",
                          body)
        return body

    def _page(self) -> None:
        page = _asset_text("review", "index.html")
        # The token is URL-safe base64: nothing in it needs escaping in an attribute.
        page = page.replace("{{TOKEN}}", self.server.token)
        self._send(HTTPStatus.OK, page.encode(), "text/html; charset=utf-8")

    def _state(self) -> dict:
        review = self.server.review
        return {"counts": review.counts(), "facets": review.facets(), "left_out": review.left_out,
                "tiles": self.server.tiles, "apply": self.server.apply_options}

    def _items(self, query: dict) -> dict:
        review = self.server.review
        offset = max(0, int(query.get("offset", 0)))
        limit = min(MAX_PAGE, max(1, int(query.get("limit", 50))))
        chosen = review.select(query.get("confidence") or None, query.get("folder") or None,
                               query.get("day") or None, query.get("state") or None)
        known = review.decisions.all()
        rows = [item_json(i, known.get(i.key)) for i in chosen[offset:offset + limit]]
        return {"total": len(chosen), "offset": offset, "items": rows}

    def _photo(self, item_id: int, rank: str | None) -> str | None:
        item = self.server.review.get(item_id)
        if item is None:
            return None
        if rank is None:
            return str(item.result.query)
        found = [c for c in item.result.candidates if c.rank == int(rank)]
        return str(found[0].path) if found else None

    def _thumb(self, item_id: int, rank: str | None) -> None:
        path = self._photo(item_id, rank)
        data = self.server.thumbs.get(path) if path else None
        if data is None:
            return self._error(HTTPStatus.NOT_FOUND, "no such photo")
        self._send(HTTPStatus.OK, data, "image/jpeg", cache=True)

    def _matches(self, item_id: int, rank: int) -> None:
        from geoloc.review.matches import matched_points

        query, cand = self._photo(item_id, None), self._photo(item_id, str(rank))
        if query is None or cand is None:
            return self._error(HTTPStatus.NOT_FOUND, "no such photo")
        self._json(matched_points(query, cand))

    # -- POST ---------------------------------------------------------------------------------

    def do_POST(self) -> None:  # noqa: N802 - the base class's name
        refused = self._refused(post=True)
        if refused:
            return self._error(*refused)
        try:
            length = int(self.headers.get("Content-Length", "0"))
            if not 0 <= length <= _MAX_BODY:
                raise ValueError
            body = json.loads(self.rfile.read(length) or b"{}")
            if not isinstance(body, dict):
                raise ValueError
            route = urlsplit(self.path).path
            if route == "/api/decide":
                return self._json({"changed": self._decide(body), "counts": self.server.review.counts()})
            if route == "/api/bulk":
                return self._json({"changed": self._bulk(body), "counts": self.server.review.counts()})
            if route == "/api/apply":
                return self._json(self._apply(body))
        except (ValueError, TypeError, KeyError):
            return self._error(HTTPStatus.BAD_REQUEST, "bad request")
        return self._error(HTTPStatus.NOT_FOUND, "not found")

    def _decide(self, body: dict) -> int:
        ids = [int(i) for i in body["ids"]]
        kind = str(body["decision"])
        lat = lon = None
        if kind == "corrected":
            lat, lon = float(body["lat"]), float(body["lon"])
            if not (-90 <= lat <= 90 and -180 <= lon <= 180):
                raise ValueError
        elif kind not in ("accepted", "rejected", "open"):
            raise ValueError
        return self.server.review.decide(ids, kind, lat, lon)

    def _bulk(self, body: dict) -> int:
        kind = str(body["decision"])
        if kind not in ("accepted", "rejected", "open"):
            raise ValueError
        f = body.get("filter") or {}
        chosen = self.server.review.select(f.get("confidence") or None, f.get("folder") or None,
                                           f.get("day") or None, f.get("state") or None)
        return self.server.review.decide([i.id for i in chosen], kind)

    def _apply(self, body: dict) -> dict:
        from geoloc.review.apply import apply_decisions

        opts = self.server.apply_options
        exif, xmp = bool(body.get("exif", True)), bool(body.get("xmp", False))
        from geoloc.errors import GeolocError

        with self.server.apply_lock:  # one apply at a time: two would race on the same photos
            try:
                report = apply_decisions(self.server.review, exif=exif, xmp=xmp,
                                         xmp_name=opts.get("xmp_name", "stem"), backend=opts.get("backend")).to_json()
            except GeolocError as exc:  # no EXIF writer installed, a journal that cannot be written
                report = {"written": [], "sidecars": [], "problems": [str(exc)], "journal": None}
        return {**report, "counts": self.server.review.counts()}


def _asset_text(folder: str, name: str) -> str:
    return (resources.files("geoloc") / "assets" / folder / name).read_text(encoding="utf-8")
