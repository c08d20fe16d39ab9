// The p2phd-infer editor (serve/editor.py has the endpoints). ES modules, no build step:
//
//   state.js        the shared state and the message line
//   api.js          calls to the server (the page's token on every POST), what they send
//   maps.js         what ids mean (from /editor/info) and the edits: brush, fill, add, delete
//   history.js      undo / redo
//   view.js         the canvases: label map, selection, brush outline, photo overlay
//   style_panel.js  the looks of the selected instance: swatches, preview, copy
//   editor.js       this file: rendering, pointer input, loading, models, start
//
// Every edit ends with one render request; edits during a render coalesce into one more.

import { $, S, clearError, showError } from "./state.js";
import { call, mapsBody, mapsQuery, seedValue, styleText, toBase64 } from "./api.js";
import { addObject, cls, currentLabelOf, deleteObject, fill, paintDisk, presentIds } from "./maps.js";
import { begin, commit, hasEdits, redo, undo } from "./history.js";
import { drawCursor, drawLabel, drawOverlay, setPhotoOverlay, setTool as viewTool, setupCanvases, showImage } from "./view.js";
import { initStylePanel, refreshSwatches, updateStylePanel } from "./style_panel.js";

window.editor = {
  state: S,
  settled: () => !S.rendering && !S.dirty && !S.swatchBusy && S.renderedVersion === S.version,
  imageBase64: async () => S.imageBlob ? toBase64(S.imageBlob) : null,
  // The maps' raw little-endian int32 bytes, base64 (what the server is sent).
  mapsBase64: async () => [await toBase64(new Blob([S.label])), await toBase64(new Blob([S.inst]))],
  styleText: () => styleText(),
};

// ------------------------------------------------------------------ edits

function edited() {
  if (commit()) { clearError(); changed(); }
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

function setStyle(iid, style) {
  begin();
  if (style === null) S.styles.delete(iid); else S.styles.set(iid, style);
  edited();
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
        showImage(url);
        if (S.imageURL) URL.revokeObjectURL(S.imageURL);
        S.imageURL = url; S.imageBlob = blob; S.renders++;
        S.lastMs = Math.round(performance.now() - t0);
        S.serverMs = Number(r.headers.get("X-Render-Ms"));
        S.renderedVersion = version;
        clearError();
        $("status").textContent = `synthesized in ${S.lastMs} ms (engine ${S.serverMs} ms) · render #${S.renders}`;
      } catch (e) {
        S.renderedVersion = version;
        showError(e.message);
        $("status").textContent = "render failed";
        refreshModels();                                  // the model may have gone
      }
    } while (S.dirty);
  } finally {
    S.rendering = false;
  }
  refreshSwatches();
}

// ------------------------------------------------------------------ pointer input

function pixelAt(e) {
  const r = $("label-canvas").getBoundingClientRect();
  return {
    x: Math.min(S.W - 1, Math.max(0, Math.floor((e.clientX - r.left) * S.W / r.width))),
    y: Math.min(S.H - 1, Math.max(0, Math.floor((e.clientY - r.top) * S.H / r.height))),
  };
}

function boxOf(a, b) {
  return { x: Math.min(a.x, b.x), y: Math.min(a.y, b.y), w: Math.abs(a.x - b.x) + 1, h: Math.abs(a.y - b.y) + 1 };
}

function strokeTo(from, to) {
  const r = S.radius, steps = Math.max(1, Math.ceil(Math.hypot(to.x - from.x, to.y - from.y) / Math.max(1, r / 2)));
  for (let s = 1; s <= steps; s++) {
    const x = Math.round(from.x + (to.x - from.x) * s / steps), y = Math.round(from.y + (to.y - from.y) * s / steps);
    const b = paintDisk(x, y, r, S.cls);
    drawLabel(b.x0, b.y0, b.x1, b.y1);
  }
}

let drag = null;

function onDown(e) {
  if (!S.label || e.button !== 0) return;
  const p = pixelAt(e), at = p.y * S.W + p.x;
  if (S.tool === "add" && !cls(S.cls).thing) {
    // Refused before the drag: only object classes have instances to add.
    const c = cls(S.cls);
    showError(`${c.name} (${c.id}) is not an object class: choose one marked \u25C6 to add an object, or paint it with the brush`);
    return;
  }
  $("label-canvas").setPointerCapture(e.pointerId);
  if (S.tool === "brush") {
    begin(); drag = { last: p };
    const b = paintDisk(p.x, p.y, S.radius, S.cls);
    drawLabel(b.x0, b.y0, b.x1, b.y1);
  } else if (S.tool === "fill") {
    begin(); fill(p.x, p.y, S.cls); edited();
  } else if (S.tool === "add") {
    drag = { start: p };
  } else if (S.tool === "delete") {
    begin();
    const err = deleteObject(S.inst[at]);
    if (err) { commit(); showError(err); } else edited();
  } else if (S.tool === "pick") {
    select(S.inst[at]);
  }
}

function onMove(e) {
  if (!S.label) return;
  const p = pixelAt(e), at = p.y * S.W + p.x;
  const iid = S.inst[at], c = cls(S.label[at]);
  $("hover").textContent = `(${p.x}, ${p.y}) ${c.name} (${c.id}), instance ${iid}`;
  drawCursor(p);
  if (!drag) return;
  if (S.tool === "brush") { strokeTo(drag.last, p); drag.last = p; }
  else if (S.tool === "add") drawOverlay(boxOf(drag.start, p));
}

function onUp(e) {
  if (!drag) return;
  const d = drag; drag = null;
  if (S.tool === "brush") { edited(); return; }
  if (S.tool === "add") {
    const box = boxOf(d.start, pixelAt(e));
    begin();
    const { id, error } = addObject(S.cls, box);
    if (error) showError(error);
    if (id !== null && id !== undefined) { S.selected = id; drawLabel(box.x, box.y, box.x + box.w, box.y + box.h); }
    edited();
    drawOverlay();
  }
}

function select(iid) {
  S.selected = iid;
  drawOverlay();
  updateStylePanel();
  S.swatchVersion = -1;
  refreshSwatches();
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

// Whether a load may replace the maps: asks first when there are edits to lose.
function mayDiscard(what) {
  return !hasEdits() || window.confirm(`Discard your edits to ${S.name} and load ${what}?`);
}

function loadMaps(buf, W, H, name) {
  if (buf.byteLength !== 8 * W * H) throw new Error(`the server sent ${buf.byteLength} bytes for ${W}x${H} maps`);
  S.W = W; S.H = H; S.name = name;
  S.label = new Int32Array(buf.slice(0, 4 * W * H));
  S.inst = new Int32Array(buf.slice(4 * W * H));
  S.styles = new Map(); S.history = []; S.future = []; S.selected = null;
  setupCanvases();
  clearError();
  changed();
}

async function loadSample(name, ask = true) {
  if (ask && !mayDiscard(`sample ${name}`)) return;
  try {
    const r = await call(`/editor/samples/${encodeURIComponent(name)}`);
    loadMaps(await r.arrayBuffer(), Number(r.headers.get("X-Width")), Number(r.headers.get("X-Height")), name);
  } catch (e) { showError(e.message); }
}

async function loadFiles() {
  const fl = $("file-label").files[0], fi = $("file-inst").files[0];
  if (!fl) { showError("label: choose a label map PNG"); return; }
  if (!mayDiscard(fl.name)) return;
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
    clearError();
  } catch (e) { showError(e.message); }
}

// ------------------------------------------------------------------ models

// The server's ready models, from the repository index (KServe v2 / Triton: POST
// /v2/repository/index {"ready": true} -> [{name, version, state}]); null from a server without
// the extension (or one that refuses it).
async function indexedModels() {
  try {
    const r = await call("/v2/repository/index", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ ready: true }),
    });
    const rows = await r.json();
    if (!Array.isArray(rows)) return null;
    const ready = rows.filter((m) => m && typeof m.name === "string" && (m.state === undefined || m.state === "READY"));
    return ready.map((m) => ({ name: m.name, version: m.version ? String(m.version) : "" }));
  } catch (e) {
    return null;
  }
}

const modelQuery = (m) => new URLSearchParams(m.version ? { model: m.name, version: m.version } : { model: m.name });
const sameModel = (a, b) => a.name === b.name && (!a.version || !b.version || a.version === b.version);

// The menu: the indexed models (the one in use stays listed even when it is no longer ready,
// so the menu never claims another renders), or just the one /editor/info names.
async function refreshModels() {
  const listed = await indexedModels();
  S.modelsFrom = listed ? "index" : "info";
  const models = listed || [];
  if (!models.some((m) => sameModel(m, S.model))) models.unshift({ ...S.model });
  const sel = $("model-pick");
  sel.innerHTML = "";
  const versions = new Set(models.map((m) => m.name)).size < models.length;   // several of one
  models.forEach((m, i) => {
    const o = document.createElement("option");
    o.value = String(i);
    o.textContent = versions && m.version ? `${m.name} v${m.version}` : m.name;
    sel.appendChild(o);
  });
  S.models = models;
  sel.value = String(models.findIndex((m) => sameModel(m, S.model)));
  sel.disabled = models.length < 2;
}

function showEngine() {
  $("engine").textContent = S.info.engine_label;
  $("engine").title = `${S.info.engine} (${S.info.model} version ${S.info.version})`;
}

async function chooseModel(i) {
  const m = S.models[i];
  try {
    const info = await (await call(`/editor/info?${modelQuery(m)}`)).json();
    S.info = info;
    S.model = { name: info.model, version: info.version };
    showEngine();
    buildClassList();
    setClass(S.info.classes[S.cls] ? S.cls : 0);
    S.swatchVersion = -1;
    clearError();
    if (S.label) { drawLabel(); changed(false); }
  } catch (e) {
    showError(e.message);
    $("model-pick").value = String(S.models.findIndex((x) => sameModel(x, S.model)));
  }
}

// ------------------------------------------------------------------ tools and classes

const HINTS = {
  brush: "drag to paint the class (stuff: instance id = class id)",
  fill: "click a region to fill it with the class",
  add: () => `drag a box: a new object of the class (object classes, marked \u25C6), id class*${S.info.instances_per_class}+k`,
  delete: "click an object: it becomes the stuff around it",
  pick: "click an instance to choose its look below",
};

function setTool(t) {
  S.tool = t;
  $("hint").textContent = typeof HINTS[t] === "function" ? HINTS[t]() : HINTS[t];
  viewTool(t);
  drawCursor(null);
  for (const b of document.querySelectorAll("#tools button")) b.classList.toggle("active", b.dataset.tool === t);
  for (const li of document.querySelectorAll("#classes li")) li.classList.toggle("dim", t === "add" && li.dataset.thing !== "1");
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
    li.dataset.thing = c.thing ? "1" : "0";
    li.title = `${c.name} (label ${c.id})${c.thing ? ", an object class: Add object makes instances of it" : ", stuff"}`;
    li.innerHTML = `<span class="chip"></span><span class="id"></span><span class="thing"></span><span class="name"></span><span class="k"></span>`;
    li.querySelector(".chip").style.background = `rgb(${c.colour.join(",")})`;
    li.querySelector(".id").textContent = c.id;
    li.querySelector(".thing").textContent = c.thing ? "\u25C6" : "";
    li.querySelector(".name").textContent = c.name;
    li.querySelector(".k").textContent = c.clusters ? `${c.clusters} looks` : "";
    li.addEventListener("click", () => setClass(c.id));
    ul.appendChild(li);
  }
  setTool(S.tool);
}

// ------------------------------------------------------------------ start

async function start() {
  if (new Uint8Array(new Uint32Array([1]).buffer)[0] !== 1) {
    showError("this browser is big-endian; the editor sends little-endian id maps"); return;
  }
  try {
    S.info = await (await call("/editor/info")).json();
  } catch (e) {
    // The server's first model may be unloaded (explicit model control): the first ready one.
    const listed = await indexedModels();
    try {
      if (!listed || !listed.length) throw e;
      S.info = await (await call(`/editor/info?${modelQuery(listed[0])}`)).json();
    } catch (e2) { showError(e2.message); return; }
  }
  S.model = { name: S.info.model, version: S.info.version };
  showEngine();
  buildClassList();
  await refreshModels();
  window.addEventListener("focus", refreshModels);       // models loaded or unloaded meanwhile
  for (const name of S.info.samples) {
    const o = document.createElement("option"); o.value = o.textContent = name; $("sample").appendChild(o);
  }
  setTool("brush");
  setClass(S.info.classes.length > 7 ? 7 : 0);
  for (const b of document.querySelectorAll("#tools button")) b.addEventListener("click", () => setTool(b.dataset.tool));
  $("radius").addEventListener("input", () => { S.radius = Number($("radius").value); $("radius-value").textContent = S.radius; });
  $("undo").addEventListener("click", () => { if (undo()) changed(); });
  $("redo").addEventListener("click", () => { if (redo()) changed(); });
  $("overlay-photo").addEventListener("change", () => setPhotoOverlay($("overlay-photo").checked));
  $("model-pick").addEventListener("change", () => chooseModel(Number($("model-pick").value)));
  $("error-close").addEventListener("click", () => showError(""));
  $("load-sample").addEventListener("click", () => loadSample($("sample").value));
  $("load-files").addEventListener("click", loadFiles);
  for (const id of ["file-label", "file-inst"]) {
    $(id).addEventListener("change", () => {
      const f = $(id).files[0];
      $(`${id}-name`).textContent = f ? f.name : "";
      $(`${id}-name`).title = f ? f.name : "";
    });
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
  initStylePanel(setStyle);
  const cv = $("label-canvas");
  cv.addEventListener("pointerdown", onDown);
  cv.addEventListener("pointermove", onMove);
  cv.addEventListener("pointerup", onUp);
  cv.addEventListener("pointercancel", onUp);
  cv.addEventListener("pointerleave", () => drawCursor(null));
  window.addEventListener("beforeunload", (e) => { if (hasEdits()) { e.preventDefault(); e.returnValue = ""; } });
  document.addEventListener("keydown", (e) => {
    if (e.target.matches("input[type=number], input[type=text], select, textarea")) return;   // typing
    const k = e.key.toLowerCase();
    if ((e.ctrlKey || e.metaKey) && k === "z") { e.preventDefault(); if (e.shiftKey ? redo() : undo()) changed(); }
    else if ((e.ctrlKey || e.metaKey) && k === "y") { e.preventDefault(); if (redo()) changed(); }
    else if (!e.ctrlKey && !e.metaKey) {
      if (k === "v") { setPhotoOverlay(!S.photoOverlay); return; }
      const t = { b: "brush", f: "fill", o: "add", d: "delete", p: "pick" }[k];
      if (t) setTool(t);
    }
  });
  updateButtons();
  updateStylePanel();
  if (S.info.samples.length) await loadSample(S.info.samples[0], false);
}

start();
