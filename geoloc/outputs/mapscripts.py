"""The map page's two behaviours written for it: marks that would overlap gather into one
badge with their count, and the table of answers sorts by any column.

Written here rather than vendored: Leaflet.markercluster is not in ``geoloc/assets/leaflet``,
and the page must need nothing from the network. Both are geoloc's own code, holding no
user-provided text; what they show of a mark (its tooltip) was escaped when the page was built.

Clustering is greedy on screen boxes: marks are taken surest first (the estimates, then the
true positions, then candidates by rank, by their z-index), and a mark whose box meets an
earlier visible mark's box (plus a margin) is hidden into that mark's cluster, whose badge takes
the anchor's place and size. So no two visible badges overlap, at any zoom, and every hidden
mark is counted. Clicking a cluster zooms in on its marks, or at the last zoom level lists them.
"""

from __future__ import annotations

#: Runs with ``target`` = the map (``mappage.script_on``).
CLUSTER_JS = """
  var map = target, clusters = L.layerGroup().addTo(map), MARGIN = 4;
  function marks() {
    var out = [];
    map.eachLayer(function (layer) {
      if (layer instanceof L.Marker && !layer.options.geolocCluster && layer.getElement()) { out.push(layer); }
    });
    return out.sort(function (a, b) { return (b.options.zIndexOffset || 0) - (a.options.zIndexOffset || 0); });
  }
  function box(m) {
    var p = map.latLngToLayerPoint(m.getLatLng()), el = m.getElement();
    var w = el.offsetWidth || 22, h = el.offsetHeight || 22;
    return {x0: p.x - w / 2, x1: p.x + w / 2, y0: p.y - h / 2, y1: p.y + h / 2, w: w, h: h};
  }
  function meets(a, b) {
    return a.x0 < b.x1 + MARGIN && b.x0 < a.x1 + MARGIN && a.y0 < b.y1 + MARGIN && b.y0 < a.y1 + MARGIN;
  }
  function label(m) {
    var tip = m.getTooltip() ? m.getTooltip().getContent() : '';
    // Escaped HTML when the page was built: parsed inertly (no image loads, no script), its text kept.
    return typeof tip === 'string' ? new DOMParser().parseFromString(tip, 'text/html').body.textContent : '';
  }
  function list(group, at) {
    var root = document.createElement('div');
    root.className = 'geoloc-cluster-list';
    group.forEach(function (m) {
      var a = document.createElement('a');
      a.textContent = label(m) || 'mark';
      a.addEventListener('click', function () { map.closePopup(); m.openPopup(); });
      root.appendChild(a);
    });
    L.popup({maxWidth: 280}).setLatLng(at).setContent(root).openOn(map);
  }
  function regroup() {
    clusters.clearLayers();
    var anchors = [];
    marks().forEach(function (m) {
      m.getElement().style.display = '';
      var b = box(m);
      for (var i = 0; i < anchors.length; i++) {
        if (meets(b, anchors[i].box)) {
          anchors[i].group.push(m);
          return;
        }
      }
      anchors.push({box: b, group: [m]});
    });
    anchors.forEach(function (a) {
      if (a.group.length < 2) { return; }
      a.group.forEach(function (m) { m.getElement().style.display = 'none'; });
      var first = a.group[0];
      var icon = L.divIcon({className: 'geoloc-marker geoloc-cluster', html: '<div>' + a.group.length + '</div>',
                            iconSize: [Math.max(a.box.w, 24), Math.max(a.box.h, 22)]});
      var c = new L.Marker(first.getLatLng(), {icon: icon, geolocCluster: true, zIndexOffset: 6000,
                                           title: a.group.length + ' marks: click to see them'});
      c.on('click', function () {
        var bounds = L.latLngBounds(a.group.map(function (m) { return m.getLatLng(); }));
        if (map.getZoom() < map.getMaxZoom() && bounds.getNorthEast().distanceTo(bounds.getSouthWest()) > 0.5) {
          map.fitBounds(bounds, {padding: [40, 40]});
        } else {
          list(a.group, first.getLatLng());
        }
      });
      clusters.addLayer(c);
      // The badge takes its surest mark's colour: red where an estimate is inside, blue for candidates.
      var inner = first.getElement().firstChild, badge = c.getElement() && c.getElement().firstChild;
      if (inner && badge && inner.style) { badge.style.background = inner.style.background; }
    });
  }
  map.on('zoomend overlayadd overlayremove', function () { setTimeout(regroup, 0); });
  map.whenReady(function () { setTimeout(regroup, 0); });
"""

#: The table of answers sorts by the column whose header is clicked (again: the other way);
#: numbers by value (``data-sort`` holds the raw one), text alphabetically.
TABLE_JS = """
(function () {
  function key(row, col) {
    var cell = row.cells[col];
    if (!cell) { return ''; }
    var raw = cell.getAttribute('data-sort');
    if (raw === null) { raw = cell.textContent.trim(); }
    var n = Number(raw);
    return raw !== '' && !isNaN(n) ? n : raw.toLowerCase();
  }
  document.querySelectorAll('.geoloc-results table').forEach(function (table) {
    var heads = table.querySelectorAll('thead th');
    heads.forEach(function (th, col) {
      th.title = 'sort by this column';
      th.addEventListener('click', function () {
        var up = th.getAttribute('aria-sort') !== 'ascending';
        heads.forEach(function (h) { h.removeAttribute('aria-sort'); });
        th.setAttribute('aria-sort', up ? 'ascending' : 'descending');
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = key(a, col), y = key(b, col);
          if (typeof x !== typeof y) { return (typeof x === 'number' ? -1 : 1) * (up ? 1 : -1); }
          return (x < y ? -1 : x > y ? 1 : 0) * (up ? 1 : -1);
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  });
})();
"""
