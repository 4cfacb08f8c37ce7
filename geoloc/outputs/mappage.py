"""The map page's building blocks: Leaflet inlined, popups and tooltips bound safely, the icons,
the style sheet and geoloc's own small scripts.

Every piece that carries a user-provided string (a file name, a path) escapes it here
(:func:`esc`, :func:`bind_element`, :func:`script_json`): what :mod:`geoloc.outputs.mapview` lays out
from them cannot run as code, whatever a photo is called.
"""

from __future__ import annotations

import base64
import functools
import html
import io
import re
from pathlib import Path

#: The Leaflet release in ``geoloc/assets/leaflet`` (its README says where it came from).
LEAFLET_VERSION = "1.9.4"


def esc(text: object) -> str:
    """HTML-escape a user-provided string for a popup, tooltip or layer name."""
    return html.escape(str(text), quote=True)


def thumbnail_data_uri(path: Path, max_side: int, quality: int = 70) -> str | None:
    """A small JPEG of the photo as a data: URI, or None when the photo cannot be read."""
    if max_side <= 0:
        return None
    try:
        from geoloc.photos import load_image

        image = load_image(Path(path), max_side)
        image.thumbnail((max_side, max_side))
        buf = io.BytesIO()
        image.convert("RGB").save(buf, format="JPEG", quality=quality, optimize=True)
    except Exception:  # a thumbnail is decoration: a missing one must not cost the map
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def leaflet_assets() -> tuple[str, str]:
    """Leaflet's JS and CSS as text to inline, the CSS's icons as data: URIs.

    Read from the package once per process. The icons are the layer control's and the default
    marker's: referenced by a relative URL, they would be requests for files that are not there.
    """
    return _leaflet_assets()


@functools.lru_cache(maxsize=1)
def _leaflet_assets() -> tuple[str, str]:
    from importlib import resources

    folder = resources.files("geoloc") / "assets" / "leaflet"
    js = (folder / "leaflet.js").read_text(encoding="utf-8")
    css = (folder / "leaflet.css").read_text(encoding="utf-8")

    def inline(match: re.Match) -> str:
        data = (folder / "images" / match.group(1)).read_bytes()
        return "url(data:image/png;base64," + base64.b64encode(data).decode("ascii") + ")"

    css = re.sub(r"url\(images/([\w.-]+\.png)\)", inline, css)
    # Neither may close the element it is inlined into (neither does today; this keeps it so).
    js = re.sub(r"</(script)", r"<\\/\1", js, flags=re.I)
    css = re.sub(r"</(style)", r"<\\/\1", css, flags=re.I)
    return js, css


def offline_map_class():
    """folium.Map that links no JS or CSS at all: Leaflet is inlined by :func:`build_map`."""
    import folium

    class OfflineMap(folium.Map):
        default_js: list = []
        default_css: list = []

    return OfflineMap


def raw_element(text: str):
    """An element that renders ``text`` as it is (never as a Jinja template: Leaflet's code
    is not ours to vet for ``{{``)."""
    from branca.element import Element
    from folium.template import Template

    class _Raw(Element):
        _template = Template("{{ this.text }}")

        def __init__(self, body: str):
            super().__init__()
            self.text = body

    return _Raw(text)


def script_on(kind: str, body: str):
    """A script run after its parent (the map, or a layer) exists, the parent as ``target``.
    ``body`` is geoloc's own code: it holds no user-provided text."""
    from branca.element import MacroElement
    from folium.template import Template

    class _On(MacroElement):
        _template = Template(
            "{% macro script(this, kwargs) %}(function (target) {" + body
            + "})({{ this._parent.get_name() }});{% endmacro %}"
        )

        def __init__(self):
            super().__init__()
            self._name = "Geoloc" + kind

    return _On()


def bind_element(kind: str, content_html: str, options: dict | None = None, thumb: str | list[str] | None = None):
    """bindPopup/bindTooltip from a JSON-encoded string (safe inside <script>).

    A popup with thumbnails refers to them by key (``geolocThumbs``; one key or a list): a photo
    that is a candidate for many queries is embedded once, not once per popup.
    """
    from branca.element import MacroElement
    from folium.template import Template

    class _Bind(MacroElement):
        _template = Template(
            "{% macro script(this, kwargs) %}"
            "{{ this._parent.get_name() }}.bind" + kind + "("
            "{% if this.thumb %}function () { return geolocPopup({{ this.content|tojson }}, "
            "{{ this.thumb|tojson }}); }"
            "{% else %}{{ this.content|tojson }}{% endif %}, {{ this.options|tojson }});"
            "{% endmacro %}"
        )

        def __init__(self):
            super().__init__()
            self._name = "Bind" + kind
            self.content = content_html
            self.options = options or {}
            self.thumb = thumb

    return _Bind()


# Builds a popup from escaped HTML plus thumbnails looked up by key (see bind_element): an
# estimate's popup shows the photo and its best candidate side by side.
POPUP_JS = """
function geolocPopup(html, keys) {
  var box = document.createElement('div');
  var row = document.createElement('div');
  row.className = 'geoloc-thumbs';
  [].concat(keys || []).forEach(function (key) {
    var src = window.geolocThumbs ? window.geolocThumbs[key] : null;
    if (src) {
      var img = document.createElement('img');
      img.src = src;
      img.alt = '';
      img.className = 'geoloc-thumb';
      row.appendChild(img);
    }
  });
  box.appendChild(row);
  var body = document.createElement('div');
  body.innerHTML = html;
  box.appendChild(body);
  return box;
}
"""


def rank_icon(rank: int, color: str):
    import folium

    return folium.DivIcon(
        html=f'<div class="geoloc-rank" style="background:{color}">{int(rank)}</div>',
        icon_size=(22, 22),
        icon_anchor=(11, 11),
        class_name="geoloc-marker",
    )


def badge_icon(label: str, color: str, size: tuple[int, int] = (34, 20)):
    import folium

    return folium.DivIcon(
        html=f'<div class="geoloc-badge" style="background:{color}">{esc(label)}</div>',
        icon_size=size,
        icon_anchor=(size[0] // 2, size[1] // 2),
        class_name="geoloc-marker",
    )


CSS = """
<style>
body { display: flex; flex-direction: column; font: 13px/1.4 sans-serif; }
/* The map takes the top of the page, the table of answers the rest (scroll down to it). */
.folium-map { flex: none; }
.geoloc-results { flex: none; order: 1; padding: 8px 12px 16px; }
/* Offline, the tiles do not load: the marks stand on this plain background. */
.leaflet-container { background: #e8eaed; }
.geoloc-marker { background: transparent; border: none; }
.geoloc-rank, .geoloc-badge {
  color: #fff; font: bold 12px/1 sans-serif; text-align: center; border: 2px solid #fff;
  box-shadow: 0 0 3px rgba(0,0,0,.6); box-sizing: border-box;
}
.geoloc-rank { width: 22px; height: 22px; line-height: 18px; border-radius: 50%; }
.geoloc-badge { height: 20px; line-height: 16px; border-radius: 4px; padding: 0 3px; }
.geoloc-popup { font: 12px/1.4 sans-serif; max-width: 240px; }
.geoloc-thumb { display: block; max-width: 220px; max-height: 180px; margin-bottom: 4px; }
.geoloc-thumbs { display: flex; gap: 4px; }
.geoloc-thumbs .geoloc-thumb:nth-child(2) { max-width: 108px; }
.geoloc-thumbs .geoloc-thumb:first-child:nth-last-child(2) { max-width: 108px; }
.geoloc-cluster div {
  background: #444; color: #fff; font: bold 12px/1 sans-serif; border: 2px solid #fff; border-radius: 14px;
  height: 24px; line-height: 20px; min-width: 24px; text-align: center; box-sizing: border-box; padding: 0 5px;
  box-shadow: 0 0 3px rgba(0,0,0,.6); cursor: pointer;
}
.geoloc-cluster-list a { display: block; cursor: pointer; color: #1d4ed8; }
.geoloc-results th { cursor: pointer; user-select: none; }
.geoloc-results th[aria-sort=ascending]::after { content: " \\25B2"; }
.geoloc-results th[aria-sort=descending]::after { content: " \\25BC"; }
.geoloc-popup .path { word-break: break-all; color: #444; }
.geoloc-legend, .geoloc-offline {
  background: rgba(255,255,255,.92); padding: 6px 8px; border-radius: 4px;
  box-shadow: 0 0 4px rgba(0,0,0,.4); font: 12px/1.3 sans-serif;
}
.geoloc-legend { pointer-events: none; }
.geoloc-offline { max-width: 260px; }
.geoloc-legend div { margin: 3px 0; white-space: nowrap; }
.geoloc-legend .geoloc-badge, .geoloc-legend .geoloc-rank {
  display: inline-block; vertical-align: middle; min-width: 22px; margin-right: 4px;
}
.geoloc-results table { border-collapse: collapse; }
.geoloc-results th, .geoloc-results td { padding: 3px 8px; border-bottom: 1px solid #ddd; text-align: left; }
.geoloc-results td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.geoloc-results .path { word-break: break-all; }
</style>
"""

# The legend (static HTML in the page) moves into the map's bottom-right corner; a note says
# so when tiles fail (offline), once. Both are geoloc's own text: no user string in them.
LEGEND_JS = """
  var legend = document.querySelector('.geoloc-legend');
  if (legend) {
    var control = L.control({position: 'bottomright'});
    control.onAdd = function () { return legend; };
    control.addTo(target);
  }
"""

OFFLINE_JS = """
  target.once('tileerror', function () {
    var note = L.control({position: 'topleft'});
    note.onAdd = function () {
      var box = L.DomUtil.create('div', 'geoloc-offline');
      box.textContent = 'Map tiles could not be loaded (offline?): the marks stand on a plain '
        + 'background; every answer is also listed under the map.';
      return box;
    };
    note.addTo(target._map);
  });
"""


def badge_size(label: str) -> tuple[int, int]:
    """Wide enough for the label in 12 px bold (about 8 px a character, plus the border)."""
    return (max(34, 8 * len(label) + 10), 20)


def script_json(data) -> str:
    """JSON that cannot close or confuse the <script> element it sits in."""
    import json

    return (
        json.dumps(data, ensure_ascii=True)
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
    )
