// The style panel: the selected instance's looks (one swatch per feature cluster of its class,
// rendered by the server), a larger preview of the swatch under the pointer, and "copy style
// from", which offers the other instances of the same class only (a look is a cluster of the
// instance's own class).

import { $, S, showError } from "./state.js";
import { call, mapsBody, mapsQuery } from "./api.js";
import { cls, currentLabelOf, presentIds } from "./maps.js";

const SWATCH_SIDE = 88;            // the longer side of a swatch on the page, CSS pixels
let choose = () => {};             // (iid, style) -> the edit; editor.js sets it
let strip = null;                  // {iid, bmp, k, cw, ch} of the swatches shown

export function initStylePanel(onChoose) { choose = onChoose; }

export function updateStylePanel() {
  const iid = S.selected, title = $("sel-title");
  const copy = $("copy-from");
  copy.innerHTML = "";
  if (iid === null || !S.inst) {
    title.textContent = "- pick an instance (Pick style tool)";
    $("swatches").innerHTML = "";
    strip = null; preview(null);
    for (const b of ["random", "auto", "copy"]) $(b).disabled = true;
    return;
  }
  const lab = currentLabelOf(iid), c = cls(lab), s = S.styles.get(iid);
  const how = !s ? "auto (seeded)" : s.copy !== undefined ? `copies ${s.copy}` : `cluster ${s.k}`;
  title.textContent = `- instance ${iid}: ${c.name} (${c.id}), ${c.clusters} clusters; now ${how}`;
  for (const b of ["random", "auto"]) $(b).disabled = c.clusters === 0;
  for (const id of [...presentIds()].sort((a, b) => a - b)) {
    if (id === iid || currentLabelOf(id) !== lab) continue;
    const o = document.createElement("option");
    o.value = id; o.textContent = `${id} ${c.name}`;
    copy.appendChild(o);
  }
  $("copy").disabled = c.clusters === 0 || !copy.options.length;
  copy.disabled = !copy.options.length;
  for (const el of document.querySelectorAll(".swatch")) {
    el.classList.toggle("active", !!s && s.k === Number(el.dataset.k));
  }
  if (strip && strip.iid === iid) preview(s && s.k !== undefined ? s.k : null);
}

// The swatch j at the preview's size (null: cleared).
function preview(j) {
  const cv = $("preview"), ctx = cv.getContext("2d");
  ctx.clearRect(0, 0, cv.width, cv.height);
  if (j === null || !strip || j >= strip.k) { $("preview-caption").textContent = "preview"; return; }
  const { bmp, cw, ch } = strip;
  const scale = Math.min(cv.width / cw, cv.height / ch);
  const w = cw * scale, h = ch * scale;
  ctx.drawImage(bmp, j * cw, 0, cw, ch, (cv.width - w) / 2, (cv.height - h) / 2, w, h);
  $("preview-caption").textContent = `cluster ${j} · ${cw}x${ch} px around the instance`;
}

export async function refreshSwatches() {
  const iid = S.selected;
  if (iid === null || S.swatchBusy || S.swatchVersion === S.version) return;
  const c = cls(currentLabelOf(iid));
  if (!c.clusters) {
    $("swatches").textContent = `${c.name} has no feature clusters in this model`;
    strip = null; preview(null);
    return;
  }
  S.swatchBusy = true;
  const version = S.version;
  try {
    const r = await call(`/editor/swatches?${mapsQuery({ id: iid })}`, { method: "POST", body: mapsBody() });
    const k = Number(r.headers.get("X-Clusters"));
    const bmp = await createImageBitmap(await r.blob());
    if (S.selected !== iid) return;
    const cw = bmp.width / k, ch = bmp.height, scale = Math.min(1, SWATCH_SIDE / Math.max(cw, ch));
    strip = { iid, bmp, k, cw, ch };
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
      div.addEventListener("click", () => choose(iid, { k: j }));
      div.addEventListener("mouseenter", () => preview(j));
      div.addEventListener("mouseleave", () => {
        const s = S.styles.get(iid);
        preview(s && s.k !== undefined ? s.k : null);
      });
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
