"""An HTML map of the answers: estimate, uncertainty circle, numbered candidates, the truth.

Built with folium, with deliberate departures from its defaults:

- the page is one file that needs no network: Leaflet's JS and CSS (its icons too) are inlined
  from the copy shipped in ``geoloc/assets/leaflet`` instead of linked from a CDN, and nothing
  else is loaded (no jQuery, Bootstrap or Font Awesome: markers are plain ``L.divIcon``\\ s).
  Only the map tiles come from the tile server; offline, the marks stand on a plain background
  and a note says the tiles did not load;
- the answers are also an HTML table under the map, readable without the map (or JavaScript);
- popups and tooltips are bound from JSON strings that this module escapes itself. folium's own
  ``Popup``/``Tooltip`` paste their HTML into a JavaScript template literal, where a file named
  ``${alert(1)}.jpg`` would run as code; here every user-provided string (file names, paths) is
  HTML-escaped and then JSON-encoded into the script.

The pieces (inlined Leaflet, safe bindings, icons, style, scripts) are :mod:`geoloc.outputs.mappage`'s;
this module lays out the answers with them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from geoloc.files import atomic_write, check_writable, common_folder, display_path
from geoloc.formatting import format_distance
from geoloc.errors import GeolocError
from geoloc.outputs.mappage import (
    CSS,
    LEGEND_JS,
    OFFLINE_JS,
    POPUP_JS,
    badge_icon,
    badge_size,
    bind_element,
    esc,
    leaflet_assets,
    offline_map_class,
    rank_icon,
    raw_element,
    script_json,
    script_on,
    thumbnail_data_uri,
)
from geoloc.outputs.mapscripts import CLUSTER_JS, TABLE_JS
from geoloc.locating.results import LocateResult


@dataclass
class MapConfig:
    # Longest side of the thumbnails embedded in popups; 0 embeds none (``--no-thumbnails``).
    thumbnail_px: int = 160
    thumbnail_quality: int = 70
    tiles: str | None = "OpenStreetMap"
    # Show paths relative to this folder (``--relative-paths``: the map's own), so that a map
    # shared with its photos names them wherever the folder is copied; None: as they are.
    relative_to: Path | None = None
    # Colours: estimate and its circle, candidates, the query's own GPS.
    estimate_color: str = "#d62728"
    candidate_color: str = "#1f77b4"
    truth_color: str = "#2ca02c"


def _legend_html(cfg: MapConfig, with_truth: bool) -> str:
    """A fixed key to the symbols, bottom right; no user-provided text in it."""
    rows = [
        (f'<span class="geoloc-badge" style="background:{cfg.estimate_color}">est</span> '
        "estimate; circle: its uncertainty radius"),
        (f'<span class="geoloc-badge" style="background:{cfg.estimate_color}">est?</span> '
        "low or medium confidence (dashed circle): see its popup"),
        (f'<span class="geoloc-rank" style="background:{cfg.candidate_color}">1</span> '
        "database photo, by rank (1 = most similar)"),
    ]
    if with_truth:
        rows.append(
            f'<span class="geoloc-badge" style="background:{cfg.truth_color}">GPS</span> '
            "the photo's own GPS; dashed line: the error"
        )
    body = "".join(f"<div>{row}</div>" for row in rows)
    return f'<div class="geoloc-legend">{body}</div>'


def _popup_html(title: str, lines: Sequence[str], path: str | None) -> str:
    """Popup body. ``title`` and ``lines`` must already be escaped; ``path`` is escaped here."""
    parts = ['<div class="geoloc-popup">', f"<b>{title}</b>"]
    parts.extend(f"<br>{line}" for line in lines)
    if path:
        parts.append(f'<br><span class="path">{esc(path)}</span>')
    parts.append("</div>")
    return "".join(parts)


#: The table sorts confidence surest first.
_SURENESS = {"high": 0, "medium": 1, "low": 2}


def _distance(metres: float | None) -> str:
    return format_distance(metres, missing="?")


def _trip_path(fmap, located: list) -> None:
    """The trip's path: the located photos of known UTC time joined in time order (a layer of its
    own, dashed: the estimates, not a recorded track)."""
    import folium

    from geoloc.outputs.export import in_time_order

    timed = in_time_order(located)
    if len(timed) < 2:
        return
    layer = folium.FeatureGroup(name="trip (photos in time order)", show=True)
    folium.PolyLine([[r.estimate.lat, r.estimate.lon] for _, r in timed], color="#555555", weight=2,
                    dash_array="4 6", opacity=0.8).add_to(layer)
    layer.add_to(fmap)


def build_map(results: Iterable[LocateResult], config: MapConfig | None = None):
    """A folium map with one layer per located query, and the table of every answer under it;
    raises GeolocError if nothing can be drawn."""
    import folium

    cfg = config or MapConfig()
    answers = list(results)
    located = [r for r in answers if r.estimate is not None]
    if not located:
        raise GeolocError("nothing to map: no query could be located")

    OfflineMap = offline_map_class()
    first = located[0].estimate
    fmap = OfflineMap(location=[first.lat, first.lon], zoom_start=17, tiles=None, control_scale=True,
                      height="70%")
    root = fmap.get_root()
    root.title = "geoloc map"
    js, css = leaflet_assets()
    root.header.add_child(raw_element(f"<style>{css}</style>"), name="leaflet_css")
    root.header.add_child(raw_element(f"<script>{js}</script>"), name="leaflet_js")
    root.header.add_child(raw_element(CSS), name="geoloc_css")
    if cfg.tiles:
        tiles = folium.TileLayer(cfg.tiles, name="map", control=False, max_zoom=19)
        tiles.add_child(script_on("Offline", OFFLINE_JS))
        tiles.add_to(fmap)

    layers = _Layers(cfg, several=len(located) > 1)
    low = [r for r in located if r.estimate.confidence == "low"]
    # A low-confidence guess's circle can be continents wide: the view fits the others, and the
    # guesses are drawn in one layer of their own, off until asked for (they are in the table).
    low_group = folium.FeatureGroup(name=f"low confidence ({len(low)}): not shown at first", show=False) if low else None
    for index, r in enumerate(located, start=1):
        if r.estimate.confidence == "low":
            layers.query_layer(index, r, into=low_group)
        else:
            layers.query_layer(index, r).add_to(fmap)
    if low_group is not None:
        low_group.add_to(fmap)

    _trip_path(fmap, located)
    root.script.add_child(raw_element(POPUP_JS), name="geoloc_popup_js")
    root.script.add_child(raw_element("var geolocThumbs = " + script_json(layers.thumb_data) + ";"), name="geoloc_thumbs")
    if len(located) > 1:  # the trip's path, when there is one, is a layer too
        folium.LayerControl(collapsed=len(located) > 6).add_to(fmap)
    fmap.add_child(script_on("Clusters", CLUSTER_JS))
    root.script.add_child(raw_element(TABLE_JS), name="geoloc_table_js")
    root.html.add_child(raw_element(_legend_html(cfg, any(r.query_gps for r in located))), name="geoloc_legend")
    fmap.add_child(script_on("Legend", LEGEND_JS))
    root.html.add_child(raw_element(layers.table_html(answers)), name="geoloc_results")
    fmap.fit_bounds(layers.bounds(), padding=(20, 20), max_zoom=19)
    return fmap


class _Layers:
    """Draws each query's layer (estimate, candidates, true position), collecting what the page
    needs once for all of them: the thumbnails, and the bounds that show every mark."""

    def __init__(self, cfg: MapConfig, several: bool):
        self.cfg = cfg
        self.several = several
        self.thumb_data: dict[str, str] = {}
        self._thumb_keys: dict[str, str | None] = {}
        self.lats: list[float] = []
        self.lons: list[float] = []
        #: Whether the marks drawn now set the view: False for a low-confidence guess when
        #: some estimate is surer (then only surer ones frame the map).
        self.framing = True
        self._centres: list[tuple[float, float]] = []

    def thumb(self, path: Path | str) -> str | None:
        """The key of the photo's thumbnail in ``geolocThumbs``, or None without one."""
        name = os.fspath(path)
        if name not in self._thumb_keys:
            uri = thumbnail_data_uri(Path(name), self.cfg.thumbnail_px, self.cfg.thumbnail_quality)
            key = f"t{len(self.thumb_data)}" if uri else None
            if key:
                self.thumb_data[key] = uri
            self._thumb_keys[name] = key
        return self._thumb_keys[name]

    def _pair(self, r: LocateResult) -> list[str] | None:
        """The estimate popup's thumbnails: the photo's, then its best candidate's."""
        keys = [k for k in (self.thumb(r.query), self.thumb(r.candidates[0].path) if r.candidates else None) if k]
        return keys or None

    def shown(self, path: Path | str) -> str:
        """A path as the page shows it: relative to ``relative_to`` when asked, else as given.

        Both sides are resolved first: database paths are stored resolved, and a map written
        through a symlinked folder must still name its neighbours ``photo.jpg``, not
        ``../../real/folder/photo.jpg``.
        """
        name = os.fspath(path)
        if self.cfg.relative_to is not None:
            try:
                name = os.path.relpath(os.path.realpath(name), os.path.realpath(self.cfg.relative_to))
            except ValueError:  # another drive (Windows): no relative path exists
                pass
        return display_path(name)

    def table_html(self, results: Sequence[LocateResult]) -> str:
        """Every answer as a plain HTML table, for whoever reads the page without the map (or
        without JavaScript). Every user string is escaped here."""
        # The queries named as the terminal's table names them: relative to the folder they share,
        # that folder said once above the table (unless --relative-paths asked for the map's own).
        folder = common_folder([r.query for r in results]) if self.cfg.relative_to is None else None

        def query_name(path) -> str:
            return display_path(os.path.relpath(os.path.abspath(path), folder)) if folder else self.shown(path)

        head = ("<tr><th>#</th><th>query</th><th>latitude</th><th>longitude</th><th>radius</th>"
                "<th>confidence</th><th>top candidate</th></tr>")
        rows = []
        number = 0
        for r in results:
            query = f'<td class="path">{esc(query_name(r.query))}</td>'
            e = r.estimate
            if e is None:
                rows.append(f'<tr class="failed"><td></td>{query}'
                            f'<td colspan="5">not located: {esc(r.error or "no estimate")}</td></tr>')
                continue
            number += 1
            top = r.candidates[0] if r.candidates else None
            best = (f'<span class="path">{esc(self.shown(top.path))}</span> (score {top.score:.3f})'
                    if top is not None else "")
            rows.append(
                f'<tr><td class="num">{number}</td>{query}<td class="num">{e.lat:.6f}</td>'
                f'<td class="num">{e.lon:.6f}</td><td class="num" data-sort="{float(e.radius_m):.1f}">'
                f"± {esc(_distance(e.radius_m))}</td>"
                f'<td data-sort="{_SURENESS.get(e.confidence, 3)}">{esc(e.confidence)}</td><td>{best}</td></tr>'
            )
        where = f'<p>photos in <span class="path">{esc(display_path(folder))}</span></p>' if folder else ""
        return (f'<div class="geoloc-results"><h2>geoloc estimates</h2>{where}<table>'
                f"<thead>{head}</thead><tbody>{''.join(rows)}</tbody></table></div>")

    def _extend(self, lat: float, lon: float) -> None:
        if self.framing:
            self.lats.append(lat)
            self.lons.append(lon)

    def bounds(self) -> list[list[float]]:
        if not self.lats:  # only low-confidence guesses: their estimates' centres, never their circles
            self.lats, self.lons = [p[0] for p in self._centres], [p[1] for p in self._centres]
        return [[min(self.lats), min(self.lons)], [max(self.lats), max(self.lons)]]

    def query_layer(self, index: int, r: LocateResult, into=None):
        import folium

        name = Path(r.query).name
        layer_name = f"{index}. {name}" if self.several else name
        # With several queries, badges carry the query's number and popups say whose they are.
        tag = f" {index}" if self.several else ""
        whose = f" for {esc(display_path(name))}" if self.several else ""
        group = into if into is not None else folium.FeatureGroup(name=esc(display_path(layer_name)), show=True)
        self.framing = into is None
        self._centres.append((r.estimate.lat, r.estimate.lon))
        self._estimate(group, r, name, tag)
        for c in r.candidates:
            self._candidate(group, c, whose)
        if r.query_gps is not None:
            self._truth(group, r, name, tag)
        self.framing = True
        return group

    def _estimate(self, group, r: LocateResult, name: str, tag: str) -> None:
        import folium

        from geoloc.geo import from_local_m

        cfg, e = self.cfg, r.estimate
        confident = e.confidence == "high"
        circle = folium.Circle(
            location=[e.lat, e.lon],
            radius=float(e.radius_m),
            color=cfg.estimate_color,
            weight=2,
            fill=True,
            fill_opacity=0.12,
            # A doubtful estimate's circle is dashed: the radius says little then.
            dash_array=None if confident else "6 6",
        )
        circle.add_child(bind_element("Tooltip", f"± {_distance(e.radius_m)}", {"sticky": True}))
        circle.add_to(group)
        lines = [
            f"{e.lat:.6f}, {e.lon:.6f}",
            f"uncertainty ± {_distance(e.radius_m)} ({e.support} of {e.considered} candidates agree)",
            f"confidence: <b>{esc(e.confidence)}</b>",
        ]
        lines.extend(esc(note) for note in e.warnings)
        if r.error_m is not None:
            lines.append(f"error {_distance(r.error_m)} from the photo's own GPS")
        marker = folium.Marker([e.lat, e.lon], icon=badge_icon("est" + tag + ("" if confident else "?"),
                                                           cfg.estimate_color, badge_size("est" + tag + "?")),
                               z_index_offset=3000)
        marker.add_child(bind_element(
            "Popup", _popup_html(f"Estimate for {esc(display_path(name))}", lines, self.shown(r.query)),
            {"maxWidth": 260}, self._pair(r)))
        marker.add_child(bind_element("Tooltip", esc(display_path(name))))
        marker.add_to(group)
        self._extend(e.lat, e.lon)
        # The circle's extent, so that fitting the bounds shows all of it.
        for dx, dy in ((e.radius_m, 0.0), (-e.radius_m, 0.0), (0.0, e.radius_m), (0.0, -e.radius_m)):
            self._extend(*from_local_m(dx, dy, e.lat, e.lon))

    def _candidate(self, group, c, whose: str) -> None:
        import folium

        lines = [f"score {c.score:.3f}", f"{_distance(c.distance_m)} from the estimate"]
        marker = folium.Marker([c.lat, c.lon], icon=rank_icon(c.rank, self.cfg.candidate_color),
                               z_index_offset=1000 - c.rank)
        marker.add_child(bind_element(
            "Popup", _popup_html(f"#{c.rank}{whose}", lines, self.shown(c.path)),
            {"maxWidth": 260}, self.thumb(c.path)))
        marker.add_child(bind_element("Tooltip", f"#{c.rank}{whose} · {c.score:.3f}"))
        marker.add_to(group)
        self._extend(c.lat, c.lon)

    def _truth(self, group, r: LocateResult, name: str, tag: str) -> None:
        import folium

        cfg, e = self.cfg, r.estimate
        qlat, qlon = r.query_gps
        marker = folium.Marker([qlat, qlon], icon=badge_icon("GPS" + tag, cfg.truth_color, badge_size("GPS" + tag)),
                               z_index_offset=2000)
        marker.add_child(bind_element("Popup", _popup_html(
            f"True position of {esc(display_path(name))}",
            [f"{qlat:.6f}, {qlon:.6f}", f"estimate error {_distance(r.error_m)}"], None)))
        marker.add_to(group)
        line = folium.PolyLine([[e.lat, e.lon], [qlat, qlon]], color=cfg.truth_color, weight=2, dash_array="5 5")
        line.add_child(bind_element("Tooltip", f"error {_distance(r.error_m)}"))
        line.add_to(group)
        self._extend(qlat, qlon)


def save_map(results: Iterable[LocateResult], path: Path, config: MapConfig | None = None) -> Path:
    """Write the map as one self-contained HTML file (Leaflet and thumbnails embedded), atomically.

    ``--relative-paths`` is ``MapConfig(relative_to=path.parent)``: a map shared with the photos
    beside it names them wherever the whole folder is copied.
    """
    path = Path(path).expanduser() if str(path) != "-" else Path("-")
    check_writable(path, "map")  # a folder, a block device, a missing folder: refused
    page = build_map(results, config).get_root().render()
    try:
        atomic_write(path, page, streams=True)  # -, /dev/null, a FIFO: written into, not replaced
    except OSError as exc:
        raise GeolocError(f"cannot write map {display_path(path)}: {exc.strerror or exc}") from None
    return path
