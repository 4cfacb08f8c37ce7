// geoloc review: the page. Every text that comes from a file name or EXIF is put into the
// document with textContent (never innerHTML); the server checks the token on every request.
(function () {
  'use strict';
  var TOKEN = document.body.getAttribute('data-token');
  var PAGE = 50;
  var state = {offset: 0, total: 0, items: [], current: -1, filter: {}, map: null, pin: null, circle: null,
               cands: null, counts: {}};

  function $(id) { return document.getElementById(id); }
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (text !== undefined && text !== null) { e.textContent = String(text); }
    return e;
  }
  function url(path, params) {
    var q = 'token=' + encodeURIComponent(TOKEN);
    Object.keys(params || {}).forEach(function (k) {
      if (params[k] !== undefined && params[k] !== null && params[k] !== '') {
        q += '&' + encodeURIComponent(k) + '=' + encodeURIComponent(params[k]);
      }
    });
    return path + '?' + q;
  }
  function get(path, params) {
    return fetch(url(path, params), {credentials: 'omit'}).then(function (r) {
      if (!r.ok) { throw new Error(path + ': ' + r.status); }
      return r.json();
    });
  }
  function post(path, body) {
    return fetch(path, {method: 'POST', credentials: 'omit',
                        headers: {'Content-Type': 'application/json', 'X-Geoloc-Token': TOKEN},
                        body: JSON.stringify(body)}).then(function (r) {
      if (!r.ok) { throw new Error(path + ': ' + r.status); }
      return r.json();
    });
  }
  function say(text) { $('status').textContent = text; }
  function metres(m) { return m >= 1000 ? (m / 1000).toFixed(1) + ' km' : Math.round(m) + ' m'; }

  function showCounts(c) {
    state.counts = c;
    $('counts').textContent = c.total + ' photos: ' + c.open + ' open, ' + c.accepted + ' accepted, ' +
      c.corrected + ' corrected, ' + c.rejected + ' rejected' + (c.applied ? ', ' + c.applied + ' written' : '');
  }

  function fillFacets(facets) {
    document.querySelectorAll('select[data-facet]').forEach(function (sel) {
      (facets[sel.getAttribute('data-facet')] || []).forEach(function (pair) {
        var o = el('option', null, pair[0] + ' (' + pair[1] + ')');
        o.value = pair[0];
        sel.appendChild(o);
      });
    });
  }

  function readFilter() {
    return {confidence: $('f-confidence').value, folder: $('f-folder').value, day: $('f-day').value,
            state: $('f-state').value};
  }

  function load(offset, pick) {
    state.filter = readFilter();
    var params = Object.assign({offset: offset, limit: PAGE}, state.filter);
    return get('/api/items', params).then(function (data) {
      state.offset = data.offset;
      state.total = data.total;
      state.items = data.items;
      renderRows();
      var last = Math.min(state.offset + PAGE, state.total);
      $('page').textContent = state.total ? (state.offset + 1) + '–' + last + ' of ' + state.total : 'no photo';
      $('prev').disabled = state.offset === 0;
      $('next').disabled = last >= state.total;
      if (state.items.length) { select(pick === 'last' ? state.items.length - 1 : 0); } else { clearDetail(); }
    });
  }

  function renderRows() {
    var box = $('rows');
    box.textContent = '';
    state.items.forEach(function (it, i) {
      var row = el('div', 'row');
      row.dataset.id = it.id;
      var img = el('img');
      img.loading = 'lazy';
      img.alt = '';
      img.src = url('/api/thumb/' + it.id);
      row.appendChild(img);
      var text = el('div');
      text.appendChild(el('div', 'name', it.name));
      var meta = el('div', 'meta');
      meta.appendChild(el('span', 'badge c-' + it.confidence, it.confidence));
      meta.appendChild(document.createTextNode(' ± ' + metres(it.radius_m) + ' '));
      meta.appendChild(el('span', 'badge decision d-' + it.decision, it.decision + (it.applied ? ' ✓' : '')));
      if (it.taken_at) { meta.appendChild(document.createTextNode(' ' + it.taken_at.slice(0, 10))); }
      text.appendChild(meta);
      row.appendChild(text);
      row.addEventListener('click', function () { select(i); });
      box.appendChild(row);
    });
  }

  function ensureMap(tiles) {
    if (state.map) { return; }
    // The pin's images, asked for with the token like everything else.
    var t = '?token=' + encodeURIComponent(TOKEN);
    L.Icon.Default.mergeOptions({imagePath: '/assets/images/', iconUrl: 'marker-icon.png' + t,
                                 iconRetinaUrl: 'marker-icon-2x.png' + t, shadowUrl: 'marker-shadow.png' + t});
    state.map = L.map('map', {zoomControl: true});
    if (tiles) {
      var layer = L.tileLayer(tiles, {maxZoom: 19, attribution: '&copy; OpenStreetMap contributors'});
      layer.once('tileerror', function () {
        var note = L.control({position: 'topright'});
        note.onAdd = function () {
          return el('div', 'offline-note', 'Map tiles could not be loaded (offline?): the marks stand on a plain background.');
        };
        note.addTo(state.map);
      });
      layer.addTo(state.map);
    }
    state.cands = L.layerGroup().addTo(state.map);
  }

  function clearDetail() {
    state.current = -1;
    $('title').textContent = 'Nothing to review with these filters.';
    ['estimate', 'rests', 'warnings', 'cands', 'matches-title'].forEach(function (id) { $(id).textContent = ''; });
  }

  function select(i) {
    if (i < 0 || i >= state.items.length) { return; }
    state.current = i;
    var rows = $('rows').children;
    for (var k = 0; k < rows.length; k++) { rows[k].classList.toggle('current', k === i); }
    rows[i].scrollIntoView({block: 'nearest'});
    showDetail(state.items[i]);
  }

  function position(it) {
    return it.decision === 'corrected' && it.decided_lat !== null ? [it.decided_lat, it.decided_lon] : [it.lat, it.lon];
  }

  function showDetail(it) {
    $('title').textContent = it.path;
    var where = position(it);
    $('estimate').textContent = (it.decision === 'corrected' ? 'corrected to ' : 'estimate ') +
      where[0].toFixed(6) + ', ' + where[1].toFixed(6) + ' ± ' + metres(it.radius_m) + ' · confidence ' +
      it.confidence + ' · ' + it.decision + (it.own_gps ? ' · the photo has GPS of its own' : '');
    $('rests').textContent = 'rests on: ' + it.rests_on;
    $('warnings').textContent = it.warnings.join(' · ');
    $('photo').src = url('/api/thumb/' + it.id);
    var cands = $('cands');
    cands.textContent = '';
    $('matches-title').textContent = '';
    var canvas = $('matches');
    canvas.getContext('2d').clearRect(0, 0, canvas.width, canvas.height);
    it.candidates.forEach(function (c) {
      var box = el('div', 'cand');
      var img = el('img');
      img.loading = 'lazy';
      img.alt = '';
      img.src = url('/api/thumb/' + it.id + '/' + c.rank);
      box.appendChild(img);
      box.appendChild(el('div', 'name', '#' + c.rank + ' ' + c.name));
      box.appendChild(el('div', null, 'score ' + c.score.toFixed(3) +
        (c.inliers !== null ? ' · ' + c.inliers + ' verified' : ' · not verified')));
      box.addEventListener('click', function () { showMatches(it, c, box); });
      cands.appendChild(box);
    });
    var first = it.candidates.filter(function (c) { return c.inliers !== null; })[0];
    if (first) { showMatches(it, first, cands.children[it.candidates.indexOf(first)]); }
    ensureMap(window.geolocTiles);
    drawMap(it);
  }

  function drawMap(it) {
    var map = state.map;
    if (state.pin) { map.removeLayer(state.pin); }
    if (state.circle) { map.removeLayer(state.circle); }
    state.cands.clearLayers();
    var where = position(it);
    state.circle = L.circle([it.lat, it.lon], {radius: it.radius_m, color: '#d62728', weight: 2, fillOpacity: 0.1,
                                               dashArray: it.confidence === 'high' ? null : '6 6'}).addTo(map);
    var bounds = L.latLngBounds([where]);
    it.candidates.forEach(function (c) {
      var icon = L.divIcon({className: '', html: '<div class="rank">' + Number(c.rank) + '</div>',
                            iconSize: [22, 22], iconAnchor: [11, 11]});
      var m = L.marker([c.lat, c.lon], {icon: icon, keyboard: false});
      m.bindTooltip(el('span', null, '#' + c.rank + ' ' + c.name + ' · ' + c.score.toFixed(3)));
      state.cands.addLayer(m);
      bounds.extend([c.lat, c.lon]);
    });
    state.pin = L.marker(where, {draggable: true, title: 'drag to correct', zIndexOffset: 1000}).addTo(map);
    state.pin.on('dragend', function () {
      var p = state.pin.getLatLng();
      decide('corrected', {lat: p.lat, lng: p.lng});
    });
    if (it.radius_m < 2000) { bounds.extend(L.latLng(it.lat, it.lon).toBounds(2 * it.radius_m)); }
    map.fitBounds(bounds, {padding: [30, 30], maxZoom: 18});
  }

  function showMatches(it, c, box) {
    document.querySelectorAll('.cand').forEach(function (b) { b.classList.toggle('shown', b === box); });
    var canvas = $('matches');
    var ctx = canvas.getContext('2d');
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    if (c.inliers === null) { $('matches-title').textContent = '#' + c.rank + ' was not verified'; return; }
    $('matches-title').textContent = 'matched points with #' + c.rank + '…';
    var a = new Image(), b = new Image(), ready = 0, data = null;
    function draw() {
      if (ready < 3 || state.items[state.current] !== it) { return; }
      var h = canvas.height, wa = a.width * h / a.height, wb = b.width * h / b.height;
      canvas.width = Math.round(wa + wb + 10);
      ctx.drawImage(a, 0, 0, wa, h);
      ctx.drawImage(b, wa + 10, 0, wb, h);
      ctx.lineWidth = 1;
      data.pairs.forEach(function (p, k) {
        ctx.strokeStyle = 'hsl(' + (k * 47 % 360) + ',90%,50%)';
        ctx.beginPath();
        ctx.moveTo(p[0] * wa, p[1] * h);
        ctx.lineTo(wa + 10 + p[2] * wb, p[3] * h);
        ctx.stroke();
      });
      $('matches-title').textContent = 'SIFT matches with #' + c.rank + ', found again for this view: ' + data.found + ' consistent' +
        (data.pairs.length < data.found ? ' (' + data.pairs.length + ' drawn)' : '');
    }
    a.onload = b.onload = function () { ready++; draw(); };
    a.src = url('/api/thumb/' + it.id);
    b.src = url('/api/thumb/' + it.id + '/' + c.rank);
    get('/api/matches/' + it.id + '/' + c.rank).then(function (d) { data = d; ready++; draw(); })
      .catch(function (e) { say(String(e)); });
  }

  function decide(kind, latlng) {
    var it = state.items[state.current];
    if (!it) { return Promise.resolve(); }
    var body = {ids: [it.id], decision: kind};
    if (latlng) { body.lat = latlng.lat; body.lon = latlng.lng; }
    return post('/api/decide', body).then(function (r) {
      it.decision = kind;
      if (latlng) { it.decided_lat = latlng.lat; it.decided_lon = latlng.lng; }
      showCounts(r.counts);
      var badge = $('rows').children[state.current].querySelector('.decision');
      badge.className = 'badge decision d-' + kind;
      badge.textContent = kind;
      say(it.name + ': ' + kind + (latlng ? ' to ' + latlng.lat.toFixed(6) + ', ' + latlng.lng.toFixed(6) : ''));
      if (!latlng) { next(); } else { showDetail(it); }
    }).catch(function (e) { say(String(e)); });
  }

  function next() {
    if (state.current + 1 < state.items.length) { select(state.current + 1); }
    else if (state.offset + PAGE < state.total) { load(state.offset + PAGE); }
  }
  function previous() {
    if (state.current > 0) { select(state.current - 1); }
    else if (state.offset > 0) { load(Math.max(0, state.offset - PAGE), 'last'); }
  }

  function bulk(kind, filter, what) {
    post('/api/bulk', {decision: kind, filter: filter}).then(function (r) {
      showCounts(r.counts);
      say(r.changed + ' photos ' + kind + ' (' + what + ')');
      return load(state.offset);
    }).catch(function (e) { say(String(e)); });
  }

  function apply() {
    var body = {exif: $('to-exif').checked, xmp: $('to-xmp').checked};
    say('writing…');
    $('apply').disabled = true;
    post('/api/apply', body).then(function (r) {
      showCounts(r.counts);
      var parts = [r.written.length + ' photos written', r.sidecars.length + ' sidecars'];
      if (r.journal) { parts.push('undo with `geoloc undo-exif`'); }
      if (r.problems.length) { parts.push(r.problems.join('; ')); }
      say(parts.join(' · '));
      document.body.dataset.applied = String(r.written.length + r.sidecars.length);
      return load(state.offset);
    }).catch(function (e) { say(String(e)); }).then(function () { $('apply').disabled = false; });
  }

  document.addEventListener('keydown', function (e) {
    if (e.target.tagName === 'SELECT' || e.target.tagName === 'INPUT' || e.ctrlKey || e.metaKey || e.altKey) { return; }
    var k = e.key;
    if (k === 'j' || k === 'ArrowDown') { next(); }
    else if (k === 'k' || k === 'ArrowUp') { previous(); }
    else if (k === 'a') { decide('accepted'); }
    else if (k === 'r') { decide('rejected'); }
    else if (k === 'u') { decide('open'); }
    else { return; }
    e.preventDefault();
  });
  $('accept').addEventListener('click', function () { decide('accepted'); });
  $('reject').addEventListener('click', function () { decide('rejected'); });
  $('reset').addEventListener('click', function () { decide('open'); });
  $('next').addEventListener('click', function () { load(state.offset + PAGE); });
  $('prev').addEventListener('click', function () { load(Math.max(0, state.offset - PAGE)); });
  $('accept-high').addEventListener('click', function () { bulk('accepted', {confidence: 'high', state: 'open'}, 'every open high'); });
  $('accept-shown').addEventListener('click', function () { bulk('accepted', readFilter(), 'the selection'); });
  $('reject-shown').addEventListener('click', function () { bulk('rejected', readFilter(), 'the selection'); });
  $('apply').addEventListener('click', apply);
  document.querySelectorAll('header select').forEach(function (s) {
    s.addEventListener('change', function () { load(0); });
  });

  // The state first (the tile server, the filters' values), then the first page of rows.
  get('/api/state').then(function (st) {
    window.geolocTiles = st.tiles;
    showCounts(st.counts);
    fillFacets(st.facets);
    $('to-exif').checked = st.apply.exif !== false;
    $('to-xmp').checked = !!st.apply.xmp;
    if (st.left_out) { say(st.left_out + ' photos decided in an earlier review are not shown (geoloc review --again shows them)'); }
    return load(0);
  }).then(function () {
    document.body.dataset.ready = '1';
    if (window.performance && performance.mark) { performance.mark('geoloc-rows'); }  // benchmarks/bench_review.py
  }).catch(function (e) { say(String(e)); });
})();
