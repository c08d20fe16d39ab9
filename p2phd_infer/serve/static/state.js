// The page's state, shared by the modules (editor.js wires them together).
//
// The maps live here as Int32Arrays (label ids, instance ids) and travel to the server as their
// raw little-endian bytes; every edit is an undoable diff of those arrays plus the per-instance
// style choices (history.js), and ends with one render request.

export const $ = (id) => document.getElementById(id);

export const S = {
  info: null,                         // /editor/info of the chosen model
  model: null,                        // {name, version} the calls name
  models: [],                         // what the model menu offers
  modelsFrom: null,                   // "index" (the repository index) or "info" (one model)
  W: 0, H: 0, name: "edit",
  label: null, inst: null,            // Int32Array [H*W]
  styles: new Map(),                  // instance id -> {k} | {copy}
  cls: 7, tool: "brush", radius: 10, selected: null,
  history: [], future: [],
  version: 0, renderedVersion: -1, rendering: false, dirty: false,
  swatchBusy: false, swatchVersion: -1,
  imageBlob: null, imageURL: null, lastMs: null, serverMs: null, renders: 0,
  lastError: null, rng: null,
  cursor: null,                       // the brush outline drawn: {x, y, r} in map pixels
  photoOverlay: false,                // the photo shown over the label map
};

// One message line; it never changes the layout (index.html's status bar has a fixed height).
export function showError(msg) {
  S.lastError = msg || null;
  $("error-text").textContent = msg || "";
  $("error").hidden = !msg;
}

export function clearError() {
  if (S.lastError) showError("");
}
