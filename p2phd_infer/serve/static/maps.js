// The label and instance maps: what an id means, and the edits the tools make.
//
// Ids follow the server's /editor/info: an object of a thing class (the class's `thing` flag) has
// instance id class*per+k (per = info.instances_per_class, Cityscapes' 1000); every other region
// is stuff and carries its class id. These two functions are the only place that rule is read.

import { S } from "./state.js";

export const cls = (id) => S.info.classes[id] || { id, name: String(id), colour: [255, 0, 255], clusters: 0, thing: false };

// The class an instance id's style is read against (as the server's styles.py reads it): the
// class in an object id, else the label map's class under it (pixel `at`).
export function labelOf(iid, at) {
  const per = S.info.instances_per_class;
  return iid >= per ? Math.floor(iid / per) : S.label[at];
}

// An object (one a user can delete, or add more of) as opposed to a stuff region.
export function isObject(iid) {
  const per = S.info.instances_per_class;
  return iid >= per && cls(Math.floor(iid / per)).thing === true;
}

export function presentIds() {
  const ids = new Set();
  for (let i = 0; i < S.inst.length; i++) ids.add(S.inst[i]);
  return ids;
}

export function currentLabelOf(iid) {
  const at = S.inst.indexOf(iid);
  return at < 0 ? null : labelOf(iid, at);
}

export function nextInstanceId(c) {
  const per = S.info.instances_per_class, used = presentIds();
  for (const id of S.styles.keys()) used.add(id);
  for (let k = 0; k < per; k++) if (!used.has(c * per + k)) return c * per + k;
  return null;
}

// Paint a disk of class l (stuff: instance id = class id). Returns its box, for redrawing.
export function paintDisk(cx, cy, r, l) {
  const r2 = r * r;
  for (let y = Math.max(0, cy - r); y <= Math.min(S.H - 1, cy + r); y++) {
    for (let x = Math.max(0, cx - r); x <= Math.min(S.W - 1, cx + r); x++) {
      if ((x - cx) * (x - cx) + (y - cy) * (y - cy) <= r2) {
        const i = y * S.W + x; S.label[i] = l; S.inst[i] = l;
      }
    }
  }
  return { x0: cx - r, y0: cy - r, x1: cx + r + 1, y1: cy + r + 1 };
}

// 4-connected flood fill of the region of equal (label, instance) under (x, y) with class l.
export function fill(x, y, l) {
  const W = S.W, H = S.H, start = y * W + x, l0 = S.label[start], i0 = S.inst[start];
  if (l0 === l && i0 === l) return;
  const stack = new Int32Array(W * H); let n = 0;
  const seen = new Uint8Array(W * H);
  stack[n++] = start; seen[start] = 1;
  while (n) {
    const p = stack[--n];
    S.label[p] = l; S.inst[p] = l;
    const px = p % W;
    for (const q of [px > 0 ? p - 1 : -1, px + 1 < W ? p + 1 : -1, p - W, p + W]) {
      if (q >= 0 && q < W * H && !seen[q] && S.label[q] === l0 && S.inst[q] === i0) { seen[q] = 1; stack[n++] = q; }
    }
  }
}

// A new object of class c filling the box: vehicles get a cabin (narrower top), people an
// ellipse. Returns its id, or an Error's message (the caller shows it).
export function addObject(c, box) {
  const k = cls(c);
  if (!k.thing) return { error: `${k.name} (${k.id}) is not an object class: paint it with the brush or fill` };
  if (box.w < 2 || box.h < 2) return { id: null };
  const id = nextInstanceId(c);
  if (id === null) return { error: `no free instance id left for ${k.name}` };
  const vehicle = k.id >= 26 && k.id <= 31 && k.name === ["car", "truck", "bus", "caravan", "trailer", "train"][k.id - 26];
  const person = (k.id === 24 && k.name === "person") || (k.id === 25 && k.name === "rider");
  for (let y = box.y; y < box.y + box.h; y++) {
    const t = (y - box.y) / box.h;
    for (let x = box.x; x < box.x + box.w; x++) {
      const u = (x - box.x + 0.5) / box.w;
      let inside = true;
      if (vehicle && t < 0.42) inside = u > 0.18 && u < 0.82;
      if (person) inside = ((u - 0.5) / 0.5) ** 2 + ((t - 0.5) / 0.5) ** 2 <= 1;
      if (inside) { const i = y * S.W + x; S.label[i] = c; S.inst[i] = id; }
    }
  }
  return { id };
}

// Delete rule: an object's pixels take the (label, instance) of the nearest stuff pixel around
// it, spreading inwards from its border, so an object on the road/sidewalk line splits along
// it. With no stuff around it, the nearest neighbour of any kind; a frame that was all object
// becomes label 0. Returns an error message for an id that is not an object.
export function deleteObject(iid) {
  if (!isObject(iid)) return `instance ${iid} is stuff, not an object: paint over it instead`;
  const W = S.W, N = W * S.H;
  const hole = new Uint8Array(N);
  let count = 0;
  for (let i = 0; i < N; i++) if (S.inst[i] === iid) { hole[i] = 1; count++; }
  const queue = new Int32Array(N);
  const spread = (stuffOnly) => {
    let head = 0, tail = 0;
    for (let p = 0; p < N; p++) {
      if (hole[p] || (stuffOnly && isObject(S.inst[p]))) continue;
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
  return null;
}
