// The p2phd-infer editor (serve/editor.py has the endpoints). Plain JavaScript, no build step.
//
// The maps live here as Int32Arrays (label ids, instance ids) and travel to the server as their
// raw little-endian bytes; every edit is an undoable diff of those arrays plus the per-instance
// style choices, and ends with one render request (edits during a render coalesce into one more).
//
// Delete rule: an object's pixels take the (label, instance) of the nearest stuff pixel around
// it (instance id < 1000: Cityscapes stuff), spreading inwards from its border, so an object on
// the road/sidewalk line splits along it. With no stuff around it, the nearest neighbour of any
// kind; a frame that was all object becomes label 0.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const S = {
    info: null, W: 0, H: 0, name: "edit",
    label: null, inst: null,            // Int32Array [H*W]
    styles: new Map(),                  // instance id -> {k} | {copy}
    cls: 7, tool: "brush", radius: 10, selected: null,
    history: [], future: [],
    version: 0, renderedVersion: -1, rendering: false, dirty: false,
    swatchBusy: false, swatchVersion: -1,
    imageBlob: null, imageURL: null, lastMs: null, serverMs: null, renders: 0,
    lastError: null, rng: null,
  };
  window.editor = {
    state: S,
    settled: () => !S.rendering && !S.dirty && !S.swatchBusy && S.renderedVersion === S.version,
    imageBase64: async () => S.imageBlob ? toBase64(S.imageBlob) : null,
    // The maps' raw little-endian int32 bytes, base64 (what the server is sent).
    mapsBase64: async () => [await toBase64(new Blob([S.label])), await toBase64(new Blob([S.inst]))],
    styleText: () => styleText(),
  };

  // ------------------------------------------------------------------ helpers

  function showError(msg) {
    S.lastError = msg;
    const box = $("error");
    box.textContent = msg;
    box.hidden = !msg;
  }

  async function call(url, options) {
    let r;
    try {
      r = await fetch(url, options);
    } catch (e) {
      throw new Error(`the server cannot be reached (${e.message})`);
    }
    if (!r.ok) {
      let msg = `${r.status} ${r.statusText}`;
      try { msg = (await r.json()).error || msg; } catch (e) { /* not JSON */ }
      throw new Error(msg);
    }
    return r;
  }

  function toBase64(blob) {
    return new Promise((resolve) => {
      const fr = new FileReader();
      fr.onload = () => resolve(String(fr.result).split(",")[1]);
      fr.readAsDataURL(blob);
    });
  }

  function mapsQuery(extra) {
    const q = new URLSearchParams({ width: S.W, height: S.H, seed: seedValue() });
    const style = styleText();
    if (style) q.set("style", style);
    for (const [k, v] of Object.entries(extra || {})) q.set(k, v);
    return q.toString();
  }

  function mapsBody() {
    return new Blob([S.label, S.inst], { type: "application/octet-stream" });
  }

  function seedValue() {
    const v = parseInt($("seed").value, 10);
    return Number.isFinite(v) && v >= 0 ? v : 0;
  }

  function presentIds() {
    const ids = new Set();
    for (let i = 0; i < S.inst.length; i++) ids.add(S.inst[i]);
    return ids;
  }

  // Per-instance choices as the server's style text: '#26001=3', '#26002=#26001', sorted.
  function styleText() {
    if (!S.inst) return "";
    const present = presentIds();
    return [...S.styles.entries()]
      .filter(([id]) => present.has(id))
      .sort((a, b) => a[0] - b[0])
      .map(([id, s]) => s.copy !== undefined ? `#${id}=#${s.copy}` : `#${id}=${s.k}`)
      .join(",");
  }

  const cls = (id) => S.info.classes[id] || { id, name: String(id), colour: [255, 0, 255], clusters: 0 };
  const labelOf = (iid, at) => iid >= 1000 ? Math.floor(iid / 1000) : S.label[at];

  // ------------------------------------------------------------------ drawing the label map

  let labelCtx, overlayCtx, labelImage;

  function setupCanvases() {
    for (const c of [$("label-canvas"), $("overlay")]) { c.width = S.W; c.height = S.H; }
    labelCtx = $("label-canvas").getContext("2d");
    overlayCtx = $("overlay").getContext("2d");
    labelImage = labelCtx.createImageData(S.W, S.H);
  }

  // Palette colours; instance borders darkened so neighbouring objects stay apart.
  function drawLabel(x0 = 0, y0 = 0, x1 = S.W, y1 = S.H) {
    x0 = Math.max(0, x0 - 1); y0 = Math.max(0, y0 - 1);
    x1 = Math.min(S.W, x1 + 1); y1 = Math.min(S.H, y1 + 1);
    const d = labelImage.data, W = S.W, H = S.H, classes = S.info.classes;
    for (let y = y0; y < y1; y++) {
      for (let x = x0; x < x1; x++) {
        const i = y * W + x, c = (classes[S.label[i]] || { colour: [255, 0, 255] }).colour;
        const id = S.inst[i];
        const edge = (x + 1 < W && S.inst[i + 1] !== id) || (y + 1 < H && S.inst[i + W] !== id) ||
                     (x > 0 && S.inst[i - 1] !== id) || (y > 0 && S.inst[i - W] !== id);
        const f = edge ? 0.55 : 1;
        d[4 * i] = c[0] * f; d[4 * i + 1] = c[1] * f; d[4 * i + 2] = c[2] * f; d[4 * i + 3] = 255;
      }
    }
    labelCtx.putImageData(labelImage, 0, 0, x0, y0, x1 - x0, y1 - y0);
  }

  function drawOverlay(box) {
    overlayCtx.clearRect(0, 0, S.W, S.H);
    if (S.selected !== null) {
      // The selected instance: a light veil inside, a bright yellow outline.
      const img = overlayCtx.createImageData(S.W, S.H), d = img.data, W = S.W, id = S.selected;
      for (let i = 0; i < S.inst.length; i++) {
        if (S.inst[i] !== id) continue;
        const x = i % W;
        const edge = x === 0 || x === W - 1 || i < W || i >= S.inst.length - W ||
                     S.inst[i - 1] !== id || S.inst[i + 1] !== id || S.inst[i - W] !== id || S.inst[i + W] !== id;
        d[4 * i] = 255; d[4 * i + 1] = edge ? 221 : 255; d[4 * i + 2] = edge ? 0 : 255; d[4 * i + 3] = edge ? 255 : 70;
      }
      overlayCtx.putImageData(img, 0, 0);
    }
    if (box) {
      overlayCtx.strokeStyle = "#ffe628"; overlayCtx.lineWidth = 1.5;
      overlayCtx.setLineDash([4, 3]);
      overlayCtx.strokeRect(box.x + 0.5, box.y + 0.5, box.w, box.h);
      overlayCtx.setLineDash([]);
    }
  }

  // ------------------------------------------------------------------ history

  let before = null;    // {label, inst, styles} at the start of the edit in progress

  function begin() {
    before = { label: S.label.slice(), inst: S.inst.slice(), styles: new Map(S.styles) };
  }

  function commit() {
    const b = before; before = null;
    if (!b) return;
    const idx = [];
    for (let i = 0; i < S.label.length; i++) {
      if (S.label[i] !== b.label[i] || S.inst[i] !== b.inst[i]) idx.push(i);
    }
    const stylesChanged = !sameStyles(b.styles, S.styles);
    if (!idx.length && !stylesChanged) return;
    const I = Int32Array.from(idx);
    const entry = {
      idx: I, oldL: I.map((i) => b.label[i]), oldI: I.map((i) => b.inst[i]),
      newL: I.map((i) => S.label[i]), newI: I.map((i) => S.inst[i]),
      oldStyles: b.styles, newStyles: new Map(S.styles),
    };
    S.history.push(entry);
    if (S.history.length > 200) S.history.shift();
    S.future = [];
    changed();
  }

  function sameStyles(a, b) {
    if (a.size !== b.size) return false;
    for (const [k, v] of a) {
      const w = b.get(k);
      if (!w || w.k !== v.k || w.copy !== v.copy) return false;
    }
    return true;
  }

  function apply(entry, forward) {
    const L = forward ? entry.newL : entry.oldL, I = forward ? entry.newI : entry.oldI;
    for (let j = 0; j < entry.idx.length; j++) { S.label[entry.idx[j]] = L[j]; S.inst[entry.idx[j]] = I[j]; }
    S.styles = new Map(forward ? entry.newStyles : entry.oldStyles);
  }

  function undo() {
    const e = S.history.pop();
    if (!e) return;
    apply(e, false); S.future.push(e); changed(true);
  }

  function redo() {
    const e = S.future.pop();
    if (!e) return;
    apply(e, true); S.history.push(e); changed(true);
  }

  function changed(redraw = true) {
    S.version++;
    if (S.selected !== null && !presentIds().has(S.selected)) S.selected = null;
    if (redraw) drawLabel();
    drawOverlay();
    updateButtons();
    updateStylePanel();
    scheduleRender();
  }

  function updateButtons() {
    $("undo").disabled = !S.history.length;
    $("redo").disabled = !S.future.length;
  }

  // ------------------------------------------------------------------ rendering

  async function scheduleRender() {
    if (S.rendering) { S.dirty = true; return; }
    S.rendering = true;
    try {
      do {
        S.dirty = false;
        const version = S.version;
        const t0 = performance.now();
        $("status").textContent = "rendering ...";
        try {
          const r = await call(`/editor/render?${mapsQuery()}`, { method: "POST", body: mapsBody() });
          const blob = await r.blob();
          const url = URL.createObjectURL(blob);
          await new Promise((resolve, reject) => {
            const img = $("result");
            img.onload = resolve; img.onerror = () => reject(new Error("the image did not decode"));
            img.src = url;
          });
          if (S.imageURL) URL.revokeObjectURL(S.imageURL);
          S.imageURL = url; S.imageBlob = blob; S.renders++;
          S.lastMs = Math.round(performance.now() - t0);
          S.serverMs = Number(r.headers.get("X-Render-Ms"));
          S.renderedVersion = version;
          showError("");
          $("status").textContent = `synthesized in ${S.lastMs} ms (engine ${S.serverMs} ms) · render #${S.renders}`;
        } catch (e) {
          S.renderedVersion = version;
          showError(e.message);
          $("status").textContent = "render failed";
        }
      } while (S.dirty);
    } finally {
      S.rendering = false;
    }
    refreshSwatches();
  }

  // ------------------------------------------------------------------ tools

  function paintDisk(cx, cy, r, l, iid) {
    const r2 = r * r;
    for (let y = Math.max(0, cy - r); y <= Math.min(S.H - 1, cy + r); y++) {
      for (let x = Math.max(0, cx - r); x <= Math.min(S.W - 1, cx + r); x++) {
        if ((x - cx) * (x - cx) + (y - cy) * (y - cy) <= r2) {
          const i = y * S.W + x; S.label[i] = l; S.inst[i] = iid;
        }
      }
    }
    drawLabel(cx - r, cy - r, cx + r + 1, cy + r + 1);
  }

  function strokeTo(from, to) {
    const r = S.radius, steps = Math.max(1, Math.ceil(Math.hypot(to.x - from.x, to.y - from.y) / Math.max(1, r / 2)));
    for (let s = 1; s <= steps; s++) {
      const x = Math.round(from.x + (to.x - from.x) * s / steps), y = Math.round(from.y + (to.y - from.y) * s / steps);
      paintDisk(x, y, r, S.cls, S.cls);
    }
  }

  // 4-connected flood fill of the region of equal (label, instance) under (x, y).
  function fill(x, y) {
    const W = S.W, H = S.H, start = y * W + x, l0 = S.label[start], i0 = S.inst[start];
    if (l0 === S.cls && i0 === S.cls) return;
    const stack = new Int32Array(W * H); let n = 0;
    const seen = new Uint8Array(W * H);
    stack[n++] = start; seen[start] = 1;
    while (n) {
      const p = stack[--n];
      S.label[p] = S.cls; S.inst[p] = S.cls;
      const px = p % W;
      for (const q of [px > 0 ? p - 1 : -1, px + 1 < W ? p + 1 : -1, p - W, p + W]) {
        if (q >= 0 && q < W * H && !seen[q] && S.label[q] === l0 && S.inst[q] === i0) { seen[q] = 1; stack[n++] = q; }
      }
    }
  }

  function nextInstanceId(c) {
    const used = presentIds();
    for (const id of S.styles.keys()) used.add(id);
    for (let k = 0; k < 1000; k++) if (!used.has(c * 1000 + k)) return c * 1000 + k;
    return null;
  }

  // A new object filling the box: vehicles get a cabin (narrower top), people an ellipse.
  function addObject(box) {
    const c = cls(S.cls);
    if (!c.thing) { showError(`${c.name} (${c.id}) is not an object class: paint it with the brush or fill`); return null; }
    if (box.w < 2 || box.h < 2) return null;
    const id = nextInstanceId(S.cls);
    if (id === null) { showError(`no free instance id left for ${c.name}`); return null; }
    const vehicle = c.id >= 26 && c.id <= 31 && c.name === ["car", "truck", "bus", "caravan", "trailer", "train"][c.id - 26];
    const person = (c.id === 24 && c.name === "person") || (c.id === 25 && c.name === "rider");
    for (let y = box.y; y < box.y + box.h; y++) {
      const t = (y - box.y) / box.h;
      for (let x = box.x; x < box.x + box.w; x++) {
        const u = (x - box.x + 0.5) / box.w;
        let inside = true;
        if (vehicle && t < 0.42) inside = u > 0.18 && u < 0.82;
        if (person) inside = ((u - 0.5) / 0.5) ** 2 + ((t - 0.5) / 0.5) ** 2 <= 1;
        if (inside) { const i = y * S.W + x; S.label[i] = S.cls; S.inst[i] = id; }
      }
    }
    return id;
  }

  function deleteObject(iid) {
    if (iid < 1000) { showError(`instance ${iid} is stuff, not an object: paint over it instead`); return; }
    const W = S.W, H = S.H, N = W * H;
    const hole = new Uint8Array(N);
    let count = 0;
    for (let i = 0; i < N; i++) if (S.inst[i] === iid) { hole[i] = 1; count++; }
    const queue = new Int32Array(N);
    const spread = (stuffOnly) => {
      let head = 0, tail = 0;
      for (let p = 0; p < N; p++) {
        if (hole[p] || (stuffOnly && S.inst[p] >= 1000)) continue;
        const x = p % W;
        if ((x > 0 && hole[p - 1]) || (x + 1 < W && hole[p + 1]) || (p >= W && hole[p - W]) || (p + W < N && hole[p + W])) queue[tail++] = p;
      }
      while (head < tail) {
        const p = queue[head++], x = p % W;
        for (const q of [x > 0 ? p - 1 : -1, x + 1 < W ? p + 1 : -1, p - W, p + W]) {
          if (q >= 0 && q < N && hole[q]) {
            hole[q] = 0; count--; S.label[q] = S.label[p]; S.inst[q] = S.inst[p]; queue[tail++] = q;
          }
        }
      }
    };
    spread(true);
    if (count) spread(false);
    if (count) for (let i = 0; i < N; i++) if (hole[i]) { S.label[i] = 0; S.inst[i] = 0; }
    S.styles.delete(iid);
  }

  function setStyle(iid, style) {
    begin();
    if (style === null) S.styles.delete(iid); else S.styles.set(iid, style);
    commit();
  }

  // ------------------------------------------------------------------ pointer input

  function pixelAt(e) {
    const r = $("label-canvas").getBoundingClientRect();
    return {
      x: Math.min(S.W - 1, Math.max(0, Math.floor((e.clientX - r.left) * S.W / r.width))),
      y: Math.min(S.H - 1, Math.max(0, Math.floor((e.clientY - r.top) * S.H / r.height))),
    };
  }

  let drag = null;

  function onDown(e) {
    if (!S.label || e.button !== 0) return;
    const p = pixelAt(e), at = p.y * S.W + p.x;
    $("label-canvas").setPointerCapture(e.pointerId);
    if (S.tool === "brush") {
      begin(); drag = { last: p }; paintDisk(p.x, p.y, S.radius, S.cls, S.cls);
    } else if (S.tool === "fill") {
      begin(); fill(p.x, p.y); commit();
    } else if (S.tool === "add") {
      drag = { start: p };
    } else if (S.tool === "delete") {
      begin(); deleteObject(S.inst[at]); commit();
    } else if (S.tool === "pick") {
      select(S.inst[at]);
    }
  }

  function boxOf(a, b) {
    return { x: Math.min(a.x, b.x), y: Math.min(a.y, b.y), w: Math.abs(a.x - b.x) + 1, h: Math.abs(a.y - b.y) + 1 };
  }

  function onMove(e) {
    if (!S.label) return;
    const p = pixelAt(e), at = p.y * S.W + p.x;
    const iid = S.inst[at], c = cls(S.label[at]);
    $("hover").textContent = `(${p.x}, ${p.y}) ${c.name} (${c.id}), instance ${iid}`;
    if (!drag) return;
    if (S.tool === "brush") { strokeTo(drag.last, p); drag.last = p; }
    else if (S.tool === "add") drawOverlay(boxOf(drag.start, p));
  }

  function onUp(e) {
    if (!drag) return;
    const d = drag; drag = null;
    if (S.tool === "brush") { commit(); return; }
    if (S.tool === "add") {
      const box = boxOf(d.start, pixelAt(e));
      begin();
      const id = addObject(box);
      if (id !== null) { S.selected = id; drawLabel(box.x, box.y, box.x + box.w, box.y + box.h); }
      commit();
      drawOverlay();
    }
  }

  // ------------------------------------------------------------------ the style panel

  function select(iid) {
    S.selected = iid;
    drawOverlay();
    updateStylePanel();
    S.swatchVersion = -1;
    refreshSwatches();
  }

  function currentLabelOf(iid) {
    const at = S.inst.indexOf(iid);
    return at < 0 ? null : labelOf(iid, at);
  }

  function updateStylePanel() {
    const iid = S.selected, title = $("sel-title");
    const copy = $("copy-from");
    copy.innerHTML = "";
    if (iid === null || !S.inst) {
      title.textContent = "- pick an instance (Pick style tool)";
      $("swatches").innerHTML = "";
      for (const b of ["random", "auto", "copy"]) $(b).disabled = true;
      return;
    }
    const c = cls(currentLabelOf(iid)), s = S.styles.get(iid);
    const how = !s ? "auto (seeded)" : s.copy !== undefined ? `copies ${s.copy}` : `cluster ${s.k}`;
    title.textContent = `- instance ${iid}: ${c.name} (${c.id}), ${c.clusters} clusters; now ${how}`;
    for (const b of ["random", "auto", "copy"]) $(b).disabled = c.clusters === 0;
    for (const id of [...presentIds()].sort((a, b) => a - b)) {
      if (id === iid) continue;
      const o = document.createElement("option");
      o.value = id; o.textContent = `${id} ${cls(currentLabelOf(id)).name}`;
      copy.appendChild(o);
    }
    for (const el of document.querySelectorAll(".swatch")) {
      el.classList.toggle("active", !!s && s.k === Number(el.dataset.k));
    }
  }

  async function refreshSwatches() {
    const iid = S.selected;
    if (iid === null || S.swatchBusy || S.swatchVersion === S.version) return;
    const c = cls(currentLabelOf(iid));
    if (!c.clusters) { $("swatches").textContent = `${c.name} has no feature clusters in this model`; return; }
    S.swatchBusy = true;
    const version = S.version;
    try {
      const r = await call(`/editor/swatches?${mapsQuery({ id: iid })}`, { method: "POST", body: mapsBody() });
      const k = Number(r.headers.get("X-Clusters"));
      const bmp = await createImageBitmap(await r.blob());
      if (S.selected !== iid) return;
      const cw = bmp.width / k, ch = bmp.height, scale = Math.min(1, 64 / Math.max(cw, ch));
      const box = $("swatches");
      box.innerHTML = "";
      for (let j = 0; j < k; j++) {
        const div = document.createElement("div");
        div.className = "swatch"; div.dataset.k = j; div.title = `cluster ${j}`;
        const cv = document.createElement("canvas");
        cv.width = Math.round(cw * scale); cv.height = Math.round(ch * scale);
        cv.getContext("2d").drawImage(bmp, j * cw, 0, cw, ch, 0, 0, cv.width, cv.height);
        const span = document.createElement("span"); span.textContent = j;
        div.append(cv, span);
        div.addEventListener("click", () => setStyle(iid, { k: j }));
        box.appendChild(div);
      }
      S.swatchVersion = version;
      updateStylePanel();
    } catch (e) {
      showError(e.message);
      S.swatchVersion = version;
    } finally {
      S.swatchBusy = false;
    }
    if (S.selected !== null && S.swatchVersion !== S.version && !S.rendering) refreshSwatches();
  }

  // A seeded generator (mulberry32) for the random button: the same seed, the same sequence.
  function nextRandom() {
    if (!S.rng || S.rng.seed !== seedValue()) S.rng = { seed: seedValue(), a: seedValue() >>> 0 };
    let t = (S.rng.a = (S.rng.a + 0x6D2B79F5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }

  // ------------------------------------------------------------------ loading and saving

  function loadMaps(buf, W, H, name) {
    if (buf.byteLength !== 8 * W * H) throw new Error(`the server sent ${buf.byteLength} bytes for ${W}x${H} maps`);
    S.W = W; S.H = H; S.name = name;
    S.label = new Int32Array(buf.slice(0, 4 * W * H));
    S.inst = new Int32Array(buf.slice(4 * W * H));
    S.styles = new Map(); S.history = []; S.future = []; S.selected = null;
    setupCanvases();
    changed();
  }

  async function loadSample(name) {
    try {
      const r = await call(`/editor/samples/${encodeURIComponent(name)}`);
      loadMaps(await r.arrayBuffer(), Number(r.headers.get("X-Width")), Number(r.headers.get("X-Height")), name);
    } catch (e) { showError(e.message); }
  }

  async function loadFiles() {
    const fl = $("file-label").files[0], fi = $("file-inst").files[0];
    if (!fl) { showError("label: choose a label map PNG"); return; }
    const form = new FormData();
    form.append("label", fl, fl.name);
    if (fi) form.append("inst", fi, fi.name);
    try {
      const r = await call("/editor/decode", { method: "POST", body: form });
      loadMaps(await r.arrayBuffer(), Number(r.headers.get("X-Width")), Number(r.headers.get("X-Height")),
               fl.name.replace(/\.png$/i, ""));
    } catch (e) { showError(e.message); }
  }

  function save(blob, filename) {
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob); a.download = filename;
    document.body.appendChild(a); a.click(); a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
  }

  async function downloadMap(which) {
    try {
      const data = which === "label" ? S.label : S.inst;
      const r = await call(`/editor/png?width=${S.W}&height=${S.H}&map=${which}`, { method: "POST", body: new Blob([data]) });
      save(await r.blob(), `${S.name}_${which === "label" ? "label" : "instance"}.png`);
    } catch (e) { showError(e.message); }
  }

  // ------------------------------------------------------------------ start

  const HINTS = {
    brush: "drag to paint the class (stuff: instance id = class id)",
    fill: "click a region to fill it with the class",
    add: "drag a box: a new object of the class, id class*1000+k",
    delete: "click an object: it becomes the stuff around it",
    pick: "click an instance to choose its look below",
  };

  function setTool(t) {
    S.tool = t;
    $("hint").textContent = HINTS[t];
    for (const b of document.querySelectorAll("#tools button")) b.classList.toggle("active", b.dataset.tool === t);
  }

  function setClass(id) {
    S.cls = id;
    for (const li of document.querySelectorAll("#classes li")) li.classList.toggle("active", Number(li.dataset.id) === id);
  }

  function buildClassList() {
    const ul = $("classes");
    ul.innerHTML = "";
    for (const c of S.info.classes) {
      const li = document.createElement("li");
      li.dataset.id = c.id;
      li.title = `${c.name} (label ${c.id})${c.thing ? ", an object class" : ""}`;
      li.innerHTML = `<span class="chip"></span><span class="id"></span><span class="name"></span><span class="k"></span>`;
      li.querySelector(".chip").style.background = `rgb(${c.colour.join(",")})`;
      li.querySelector(".id").textContent = c.id;
      li.querySelector(".name").textContent = c.name;
      li.querySelector(".k").textContent = c.clusters ? `${c.clusters} looks` : "";
      li.addEventListener("click", () => setClass(c.id));
      ul.appendChild(li);
    }
  }

  async function start() {
    if (new Uint8Array(new Uint32Array([1]).buffer)[0] !== 1) {
      showError("this browser is big-endian; the editor sends little-endian id maps"); return;
    }
    try {
      S.info = await (await call("/editor/info")).json();
    } catch (e) { showError(e.message); return; }
    $("model").textContent = `${S.info.engine.split("/").slice(-1)[0]} · ${S.info.backend} on ${S.info.device}`;
    buildClassList();
    for (const name of S.info.samples) {
      const o = document.createElement("option"); o.value = o.textContent = name; $("sample").appendChild(o);
    }
    setTool("brush");
    setClass(S.info.classes.length > 7 ? 7 : 0);
    for (const b of document.querySelectorAll("#tools button")) b.addEventListener("click", () => setTool(b.dataset.tool));
    $("radius").addEventListener("input", () => { S.radius = Number($("radius").value); $("radius-value").textContent = S.radius; });
    $("undo").addEventListener("click", undo);
    $("redo").addEventListener("click", redo);
    $("load-sample").addEventListener("click", () => loadSample($("sample").value));
    $("load-files").addEventListener("click", loadFiles);
    for (const id of ["file-label", "file-inst"]) {
      $(id).addEventListener("change", () => { $(`${id}-name`).textContent = $(id).files[0] ? $(id).files[0].name : ""; });
    }
    $("dl-image").addEventListener("click", () => S.imageBlob && save(S.imageBlob, `${S.name}_synthesized.png`));
    $("dl-label").addEventListener("click", () => downloadMap("label"));
    $("dl-inst").addEventListener("click", () => downloadMap("inst"));
    $("random").addEventListener("click", () => {
      const c = cls(currentLabelOf(S.selected));
      if (c.clusters) setStyle(S.selected, { k: Math.floor(nextRandom() * c.clusters) });
    });
    $("auto").addEventListener("click", () => setStyle(S.selected, null));
    $("copy").addEventListener("click", () => {
      const src = Number($("copy-from").value);
      if (Number.isFinite(src) && $("copy-from").value !== "") setStyle(S.selected, { copy: src });
    });
    $("seed").addEventListener("change", () => { S.version++; S.swatchVersion = -1; scheduleRender(); });
    const cv = $("label-canvas");
    cv.addEventListener("pointerdown", onDown);
    cv.addEventListener("pointermove", onMove);
    cv.addEventListener("pointerup", onUp);
    cv.addEventListener("pointercancel", onUp);
    document.addEventListener("keydown", (e) => {
      if (e.target.tagName === "INPUT" || e.target.tagName === "SELECT") return;
      const k = e.key.toLowerCase();
      if ((e.ctrlKey || e.metaKey) && k === "z") { e.preventDefault(); e.shiftKey ? redo() : undo(); }
      else if ((e.ctrlKey || e.metaKey) && k === "y") { e.preventDefault(); redo(); }
      else if (!e.ctrlKey && !e.metaKey) {
        const t = { b: "brush", f: "fill", o: "add", d: "delete", p: "pick" }[k];
        if (t) setTool(t);
      }
    });
    updateButtons();
    updateStylePanel();
    if (S.info.samples.length) await loadSample(S.info.samples[0]);
  }

  start();
})();
