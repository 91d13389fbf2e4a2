// nlanalysis explore: the attention map of the query under the mouse, over the image (no network).
// The data (nlanalysis/explore/data.py) is the JSON in #nla-data. A map is drawn as the figures
// draw it (grid_overlay in nlanalysis/extract/maps.py): the key grid stretched over the model input
// (bilinear, align_corners=False), the image's part of the input cut out and resized to the canvas
// (padding never drawn; after a centre crop the unseen border stays grey), over the grey image at
// opacity 0.7, with Figure 2's colour scales (inferno 0..max; RdBu_r -m..m for signed maps).
"use strict";
(function () {
  const D = JSON.parse(document.getElementById("nla-data").textContent);
  const app = document.getElementById("nla-app");
  const VIEW = 384, PIN = 150, ALPHA = 0.7, MAX_PINS = 4;
  // the query and the pins are places in the model input ([y, x] pixels: a cell's centre), so a site of another grid
  // shows the same place of the image (its nearest kept cell); state.cell is the query's cell at the current site
  const state = { image: 0, site: 0, at: null, cell: null, pins: [] };
  const bytes = (s) => Uint8Array.from(atob(s), (c) => c.charCodeAt(0));
  const LUT = {};
  for (const k in D.colormaps) LUT[k] = bytes(D.colormaps[k]);
  const greys = new Map();
  let drawn = null; // the main view's last overlay, before colouring (window.nlaExplore.overlay())
  const $ = (id) => document.getElementById(id);
  const img = () => D.images[state.image];
  const site = () => img().sites[state.site];

  function rows(s) { // "r,c" -> row of the site's maps (cached on the site)
    if (!s._rows) { s._rows = new Map(); s.cells.forEach((rc, i) => s._rows.set(rc[0] + "," + rc[1], i)); }
    return s._rows;
  }
  function el(tag, props, ...kids) { // a DOM element; text from the data only ever goes in as text nodes or properties
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (k === "dataset") Object.assign(e.dataset, v); else if (k === "style") e.style.cssText = v; else e[k] = v;
    }
    e.append(...kids);
    return e;
  }
  function centre(s, cell) { // [y, x]: the centre of a query cell of site s, in model-input pixels
    const [H, W] = img().input_size, [gh, gw] = s.query_shape;
    return [(cell[0] + 0.5) * H / gh, (cell[1] + 0.5) * W / gw];
  }
  function cellNear(s, at) { // the kept cell of s at input position `at`: the cell under it, else the kept cell of nearest centre
    const [H, W] = img().input_size, [gh, gw] = s.query_shape, [y, x] = at;
    const r = Math.min(gh - 1, Math.max(0, Math.floor(y * gh / H))), c = Math.min(gw - 1, Math.max(0, Math.floor(x * gw / W)));
    const hit = rows(s).get(r + "," + c);
    if (hit !== undefined) return s.cells[hit];
    let best = s.cells[0], bd = Infinity;
    for (const rc of s.cells) {
      const [cy, cx] = centre(s, rc), d = (cy - y) ** 2 + (cx - x) ** 2;
      if (d < bd) { bd = d; best = rc; }
    }
    return best;
  }
  async function inflate(s) { // the zlib-compressed 8-bit rows of a site
    const stream = new Blob([bytes(s)]).stream().pipeThrough(new DecompressionStream("deflate"));
    return new Uint8Array(await new Response(stream).arrayBuffer());
  }
  function ensure(i) { // decode every site of image i, once (the promise is kept on the site)
    return Promise.all(D.images[i].sites.map((s) => s._ready || (s._ready = (async () => {
      const rc = new Int32Array(bytes(s.cells).buffer);
      s.cells = Array.from({ length: rc.length / 2 }, (_, k) => [rc[2 * k], rc[2 * k + 1]]);
      s.low = new Float32Array(bytes(s.low).buffer); s.range = new Float32Array(bytes(s.range).buffer);
      s._q = await inflate(s.q);
    })())));
  }
  function mapOf(s, cell) { // Float32Array [Hk * Wk]: the dequantised map of a kept cell
    const q = s._q, n = s.key_shape[0] * s.key_shape[1], row = rows(s).get(cell[0] + "," + cell[1]);
    const lo = s.low[row], step = s.range[row] / 255, out = new Float32Array(n);
    for (let i = 0; i < n; i++) out[i] = lo + q[row * n + i] * step;
    return out;
  }
  function geometry(im, side) { // display pixels <-> model-input pixels
    const [oh, ow] = im.original_size, d = side / Math.max(oh, ow);
    return { d, w: Math.max(1, Math.round(ow * d)), h: Math.max(1, Math.round(oh * d)),
      toInput: (px, py) => [im.offset[0] + (py + 0.5) / d * im.scale[0], im.offset[1] + (px + 0.5) / d * im.scale[1]],
      toDisplay: (y, x) => [(y - im.offset[0]) / im.scale[0] * d, (x - im.offset[1]) / im.scale[1] * d] };
  }
  const cellAt = (s, g, px, py) => cellNear(s, g.toInput(px, py)); // the kept cell under display pixel (px, py)
  function grey(im, g) { // the picture as grey levels at the display size (0.85 where the file is missing)
    const key = im.id + "|" + g.w;
    if (greys.has(key)) return greys.get(key);
    const out = new Float32Array(g.w * g.h).fill(217);
    if (im._picture) {
      const c = document.createElement("canvas"); c.width = g.w; c.height = g.h;
      const cx = c.getContext("2d"); cx.drawImage(im._picture, 0, 0, g.w, g.h);
      const p = cx.getImageData(0, 0, g.w, g.h).data;
      for (let i = 0; i < out.length; i++) out[i] = 0.299 * p[4 * i] + 0.587 * p[4 * i + 1] + 0.114 * p[4 * i + 2];
    }
    greys.set(key, out);
    return out;
  }
  function resize(src, sh, sw, y0, x0, ch, cw, dh, dw) { // bilinear, align_corners=False (torch's F.interpolate)
    const out = new Float32Array(dh * dw), ry = ch / dh, rx = cw / dw;
    for (let py = 0; py < dh; py++) {
      const gy = Math.max(0, (py + 0.5) * ry - 0.5), a = Math.min(Math.floor(gy), ch - 1), b = Math.min(a + 1, ch - 1), fy = gy - a;
      for (let px = 0; px < dw; px++) {
        const gx = Math.max(0, (px + 0.5) * rx - 0.5), c = Math.min(Math.floor(gx), cw - 1), d = Math.min(c + 1, cw - 1), fx = gx - c;
        const at = (r, q) => src[(y0 + r) * sw + x0 + q];
        out[py * dw + px] = (1 - fy) * ((1 - fx) * at(a, c) + fx * at(a, d)) + fy * ((1 - fx) * at(b, c) + fx * at(b, d));
      }
    }
    return out;
  }
  function covered(im, s) { // the input pixels a (sub-sampled) key grid covers, from the top left: key_cover in nlanalysis.extract.maps
    const part = (q, k) => (k >= q || k < 1 ? 1 : Math.floor(q / k) * k / q);
    return [Math.round(im.input_size[0] * part(s.query_shape[0], s.key_shape[0])), Math.round(im.input_size[1] * part(s.query_shape[1], s.key_shape[1]))];
  }
  function overlay(im, s, values, g) { // grid_overlay (nlanalysis.extract.maps): grid -> input -> the image's part -> display
    const [H, W] = im.input_size, [hk, wk] = s.key_shape, [h, w] = im.size, [top, left] = im.offset, [ch, cw] = covered(im, s);
    let input = resize(values, hk, wk, 0, 0, hk, wk, ch, cw);
    if (ch !== H || cw !== W) { // keys left the last row or column out: not drawn there
      const full = new Float32Array(H * W).fill(NaN);
      for (let r = 0; r < ch; r++) full.set(input.subarray(r * cw, (r + 1) * cw), r * W);
      input = full;
    }
    const y0 = Math.max(top, 0), y1 = Math.min(top + h, H), x0 = Math.max(left, 0), x1 = Math.min(left + w, W);
    if (y0 === top && y1 === top + h && x0 === left && x1 === left + w) return resize(input, H, W, y0, x0, y1 - y0, x1 - x0, g.h, g.w);
    const sy = h / g.h, sx = w / g.w, field = new Float32Array(g.w * g.h).fill(NaN); // a centre crop: the unseen border stays NaN
    const r0 = Math.round((y0 - top) / sy), c0 = Math.round((x0 - left) / sx);
    const r1 = Math.min(Math.max(Math.round((y1 - top) / sy), r0 + 1), g.h), c1 = Math.min(Math.max(Math.round((x1 - left) / sx), c0 + 1), g.w);
    const part = resize(input, H, W, y0, x0, y1 - y0, x1 - x0, r1 - r0, c1 - c0);
    for (let r = r0; r < r1; r++) for (let c = c0; c < c1; c++) field[r * g.w + c] = part[(r - r0) * (c1 - c0) + c - c0];
    return field;
  }
  function draw(canvas, s, cell, side) { // the overlay of `cell`'s map; returns the map drawn
    const im = img(), g = geometry(im, side), values = mapOf(s, cell);
    canvas.width = g.w; canvas.height = g.h;
    const [H, W] = im.input_size, field = overlay(im, s, values, g);
    let lo = Infinity, hi = -Infinity;
    for (const v of field) if (!Number.isNaN(v)) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
    const signed = lo < 0, m = signed ? Math.max(-lo, hi) || 1e-12 : hi > 0 ? hi : 1e-12;
    const lut = LUT[signed ? "RdBu_r" : "inferno"], base = grey(im, g);
    const out = canvas.getContext("2d").createImageData(g.w, g.h);
    for (let i = 0; i < field.length; i++) {
      const v = field[i], k = Number.isNaN(v) ? -1 : Math.round(255 * Math.min(1, Math.max(0, signed ? (v + m) / (2 * m) : v / m)));
      for (let ch = 0; ch < 3; ch++) out.data[4 * i + ch] = k < 0 ? base[i] : ALPHA * lut[3 * k + ch] + (1 - ALPHA) * base[i];
      out.data[4 * i + 3] = 255;
    }
    const cx = canvas.getContext("2d");
    cx.putImageData(out, 0, 0);
    if (canvas.id === "nla-view") drawn = { width: g.w, height: g.h, field };
    const [qh, qw] = s.query_shape, [my, mx] = g.toDisplay((cell[0] + 0.5) * H / qh, (cell[1] + 0.5) * W / qw);
    cx.strokeStyle = "#fff"; cx.lineWidth = 2; cx.beginPath(); cx.arc(mx, my, 5, 0, 2 * Math.PI); cx.stroke();
    return values;
  }
  function validKeys(s) { // key cells whose centre shows the image (the statistics' valid keys)
    const im = img(), [H, W] = im.input_size, [hk, wk] = s.key_shape, [h, w] = im.size, [t, l] = im.offset, ok = [], [ch, cw] = covered(im, s);
    for (let r = 0; r < hk; r++) for (let c = 0; c < wk; c++) {
      const y = (r + 0.5) * ch / hk, x = (c + 0.5) * cw / wk;
      if (y >= Math.max(t, 0) && y < Math.min(t + h, H) && x >= Math.max(l, 0) && x < Math.min(l + w, W)) ok.push(r * wk + c);
    }
    return ok;
  }
  function cosDist(a, b, keys) {
    let ab = 0, aa = 0, bb = 0;
    for (const i of keys) { ab += a[i] * b[i]; aa += a[i] * a[i]; bb += b[i] * b[i]; }
    return aa > 0 && bb > 0 ? 1 - ab / Math.sqrt(aa * bb) : NaN;
  }
  const fmt = (v) => (v === null || v === undefined || Number.isNaN(v) ? "–" : Math.abs(v) >= 100 ? v.toFixed(0) : v.toFixed(4));

  function render() {
    const s = site();
    if (!state.at) state.at = centre(s, [Math.floor(s.query_shape[0] / 2), Math.floor(s.query_shape[1] / 2)]);
    state.cell = cellNear(s, state.at);
    const values = draw($("nla-view"), s, state.cell, VIEW);
    app.dataset.image = img().id;
    app.dataset.site = s.key;
    app.dataset.query = state.cell.join(",");
    app.dataset.map = JSON.stringify(Array.from(values, (v) => +v.toPrecision(7)));
    $("nla-site").value = String(state.site);
    $("nla-query").textContent = `query cell (${state.cell.join(", ")}) of ${s.query_shape.join(" x ")}; ${s.cells.length} queries kept`;
    $("nla-stats").replaceChildren(...D.stats.map((c) => el("tr", {}, el("th", {}, c), el("td", {}, fmt(s.stats[c])))));
    renderPins(s);
    renderGrid();
    document.querySelectorAll(".nla-thumb").forEach((t, i) => {
      t.classList.toggle("on", i === state.image);
      t.querySelector("span").textContent = "att " + fmt(D.images[i].sites[state.site]?.stats.att);
    });
    if (!app.dataset.ready) app.dataset.firstMapMs = performance.now().toFixed(1); // from navigation start
    app.dataset.ready = "1";
  }
  function renderPins(s) {
    const box = $("nla-pins"), keys = validKeys(s), maps = [], cells = state.pins.map((at) => cellNear(s, at));
    box.replaceChildren(...cells.map((cell, i) => {
      const c = el("canvas");
      maps.push(draw(c, s, cell, PIN));
      return el("figure", {}, c, el("figcaption", {}, `${i + 1}: cell (${cell.join(", ")})`));
    }));
    const dist = [], table = [];
    if (cells.length > 1) {
      table.push(el("tr", {}, el("th", {}, "1 - cos"), ...cells.map((_, j) => el("th", {}, String(j + 1)))));
      maps.forEach((a, i) => table.push(el("tr", {}, el("th", {}, String(i + 1)), ...maps.map((b, j) => {
        const v = cosDist(a, b, keys);
        if (j > i) dist.push(v);
        return el("td", {}, fmt(v));
      }))));
    }
    $("nla-dist").replaceChildren(...table);
    app.dataset.pinned = cells.map((c) => c.join(",")).join(";");
    app.dataset.distances = JSON.stringify(dist);
  }
  function renderGrid() { // blocks x heads, att of this image, shaded by inferno over the grid
    const sites = img().sites, blocks = [...new Set(sites.map((s) => s.block))];
    const att = sites.map((s) => s.stats.att).filter((v) => v !== null && v !== undefined);
    const top = Math.max(...att, 1e-12), lut = LUT.inferno;
    const heads = sites.some((s) => s.head !== null), table = [el("caption", {}, `att of this image per ${heads ?
      "layer and head; mean: the att of the head-averaged map (not the mean of the cells)" : "block"}; click to show`)];
    for (const b of blocks) {
      const tr = el("tr", {}, el("th", { title: b }, b));
      sites.forEach((s, i) => {
        if (s.block !== b) return;
        const v = s.stats.att, k = v === null || v === undefined ? 0 : Math.round(255 * Math.min(1, v / top));
        const bg = `rgb(${lut[3 * k]},${lut[3 * k + 1]},${lut[3 * k + 2]})`, fg = k > 150 ? "#000" : "#fff";
        const name = s.head === null ? "map" : s.head === -1 ? "mean" : "h" + s.head;
        tr.append(el("td", { className: i === state.site ? "on" : "", dataset: { site: String(i) }, style: `background:${bg};color:${fg}`,
          title: `${s.label}: att ${fmt(v)}` }, name, el("br"), fmt(v)));
      });
      table.push(tr);
    }
    $("nla-grid").replaceChildren(...table);
  }
  async function openImage(i) { await ensure(i); state.image = i; state.pins = []; state.at = state.cell = null; render(); }

  function setup() {
    $("nla-notes").textContent = D.notes.join("; ");
    $("nla-site").replaceChildren(...D.sites.map((s, i) => new Option(s.label, String(i))));
    $("nla-site").addEventListener("change", (e) => { state.site = +e.target.value; render(); });
    $("nla-grid").addEventListener("click", (e) => { const td = e.target.closest("td[data-site]"); if (td) { state.site = +td.dataset.site; render(); } });
    $("nla-strip").replaceChildren(...D.images.map((im, i) => el("figure", { className: "nla-thumb", dataset: { index: String(i) } },
      im.picture ? el("img", { src: im.picture, alt: "" }) : el("div", { className: "nla-missing" }),
      el("figcaption", {}, im.id, el("br"), el("span")))));
    $("nla-strip").addEventListener("click", (e) => { const f = e.target.closest(".nla-thumb"); if (f) openImage(+f.dataset.index); });
    const view = $("nla-view");
    view.addEventListener("mousemove", (e) => {
      const cell = cellAt(site(), geometry(img(), VIEW), e.offsetX, e.offsetY);
      if (cell.join() !== state.cell.join()) { state.at = centre(site(), cell); render(); }
    });
    view.addEventListener("click", (e) => {
      const s = site(), cell = cellAt(s, geometry(img(), VIEW), e.offsetX, e.offsetY);
      const at = state.pins.findIndex((p) => cellNear(s, p).join() === cell.join());
      if (at >= 0) state.pins.splice(at, 1); else { state.pins.push(centre(s, cell)); if (state.pins.length > MAX_PINS) state.pins.shift(); }
      state.at = centre(s, cell); render();
    });
    document.addEventListener("keydown", (e) => {
      const move = { ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1] }[e.key];
      if (!move || e.target.tagName === "SELECT") return;
      e.preventDefault();
      const s = site(), [gh, gw] = s.query_shape;
      for (let r = state.cell[0] + move[0], c = state.cell[1] + move[1]; r >= 0 && r < gh && c >= 0 && c < gw; r += move[0], c += move[1]) {
        if (rows(s).has(r + "," + c)) { state.at = centre(s, [r, c]); render(); break; }
      }
    });
    let waiting = D.images.filter((im) => im.picture).length;
    const go = () => openImage(0);
    if (!waiting) go();
    D.images.forEach((im) => {
      if (!im.picture) return;
      im._picture = new Image();
      im._picture.onload = im._picture.onerror = () => { if (--waiting === 0) go(); };
      im._picture.src = im.picture;
    });
  }
  window.nlaExplore = { overlay: () => drawn && { width: drawn.width, height: drawn.height, values: Array.from(drawn.field, (v) => (Number.isNaN(v) ? null : v)) } };
  setup();
})();
