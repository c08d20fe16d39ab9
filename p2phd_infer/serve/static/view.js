// Drawing: the label map (palette colours, instance borders darkened), the selection and the
// box being dragged (overlay canvas), the brush's outline (cursor canvas), and the photo laid
// over the label map when asked. All canvases have the map's size; CSS scales them alike.

import { $, S } from "./state.js";
import { cls } from "./maps.js";

let labelCtx, overlayCtx, cursorCtx, labelImage;

export function setupCanvases() {
  for (const c of [$("label-canvas"), $("overlay"), $("cursor")]) { c.width = S.W; c.height = S.H; }
  labelCtx = $("label-canvas").getContext("2d");
  overlayCtx = $("overlay").getContext("2d");
  cursorCtx = $("cursor").getContext("2d");
  labelImage = labelCtx.createImageData(S.W, S.H);
}

export function drawLabel(x0 = 0, y0 = 0, x1 = S.W, y1 = S.H) {
  x0 = Math.max(0, x0 - 1); y0 = Math.max(0, y0 - 1);
  x1 = Math.min(S.W, x1 + 1); y1 = Math.min(S.H, y1 + 1);
  const d = labelImage.data, W = S.W, H = S.H;
  for (let y = y0; y < y1; y++) {
    for (let x = x0; x < x1; x++) {
      const i = y * W + x, c = cls(S.label[i]).colour;
      const id = S.inst[i];
      const edge = (x + 1 < W && S.inst[i + 1] !== id) || (y + 1 < H && S.inst[i + W] !== id) ||
                   (x > 0 && S.inst[i - 1] !== id) || (y > 0 && S.inst[i - W] !== id);
      const f = edge ? 0.55 : 1;
      d[4 * i] = c[0] * f; d[4 * i + 1] = c[1] * f; d[4 * i + 2] = c[2] * f; d[4 * i + 3] = 255;
    }
  }
  labelCtx.putImageData(labelImage, 0, 0, x0, y0, x1 - x0, y1 - y0);
}

// The selected instance (a light veil inside, a bright yellow outline) and a dashed box.
export function drawOverlay(box) {
  overlayCtx.clearRect(0, 0, S.W, S.H);
  if (S.selected !== null) {
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

// The brush's outline at map pixel p (null: none), in the class's colour over a dark ring.
export function drawCursor(p) {
  if (!cursorCtx) return;                // no maps yet
  cursorCtx.clearRect(0, 0, S.W, S.H);
  S.cursor = p && S.tool === "brush" ? { x: p.x, y: p.y, r: S.radius } : null;
  if (!S.cursor) return;
  const c = cls(S.cls).colour;
  cursorCtx.beginPath();
  cursorCtx.arc(p.x + 0.5, p.y + 0.5, S.radius + 0.5, 0, 2 * Math.PI);
  cursorCtx.lineWidth = 3; cursorCtx.strokeStyle = "rgba(0,0,0,.6)"; cursorCtx.stroke();
  cursorCtx.lineWidth = 1.5; cursorCtx.strokeStyle = `rgb(${c.join(",")})`; cursorCtx.stroke();
}

export function setTool(tool) {
  $("label-canvas").classList.toggle("brush", tool === "brush");
}

// The synthesized image over the label map (half transparent), or not.
export function setPhotoOverlay(on) {
  S.photoOverlay = on;
  $("overlay-photo").checked = on;
  const img = $("label-photo");
  img.hidden = !on || !S.imageURL;
  if (on && S.imageURL && img.src !== S.imageURL) img.src = S.imageURL;
}

export function showImage(url) {
  if (S.photoOverlay) { $("label-photo").src = url; $("label-photo").hidden = false; }
}
