// Calls to the server: every POST carries the page's token (the server wrote it into the page;
// without it the editor's POSTs are refused with 403) and errors become one-line Error messages.

import { $, S } from "./state.js";
import { presentIds } from "./maps.js";

const TOKEN = document.querySelector('meta[name="p2phd-token"]').content;
export const TOKEN_HEADER = "X-P2PHD-Token";

export async function call(url, options = {}) {
  const opts = { ...options };
  if ((opts.method || "GET").toUpperCase() !== "GET") {
    opts.headers = { ...(opts.headers || {}), [TOKEN_HEADER]: TOKEN };
  }
  let r;
  try {
    r = await fetch(url, opts);
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

export function toBase64(blob) {
  return new Promise((resolve) => {
    const fr = new FileReader();
    fr.onload = () => resolve(String(fr.result).split(",")[1]);
    fr.readAsDataURL(blob);
  });
}

// ------------------------------------------------------------------ what the editor's calls send

export function seedValue() {
  const v = parseInt($("seed").value, 10);
  return Number.isFinite(v) && v >= 0 ? v : 0;
}

// Per-instance choices as the server's style text: '#26001=3', '#26002=#26001', sorted.
export function styleText() {
  if (!S.inst) return "";
  const present = presentIds();
  return [...S.styles.entries()]
    .filter(([id]) => present.has(id))
    .sort((a, b) => a[0] - b[0])
    .map(([id, s]) => s.copy !== undefined ? `#${id}=#${s.copy}` : `#${id}=${s.k}`)
    .join(",");
}

// The query of a render or swatch call: size, seed, style and the chosen model.
export function mapsQuery(extra) {
  const q = new URLSearchParams({ width: S.W, height: S.H, seed: seedValue() });
  const style = styleText();
  if (style) q.set("style", style);
  if (S.model) { q.set("model", S.model.name); if (S.model.version) q.set("version", S.model.version); }
  for (const [k, v] of Object.entries(extra || {})) q.set(k, v);
  return q.toString();
}

export function mapsBody() {
  return new Blob([S.label, S.inst], { type: "application/octet-stream" });
}
