// Undo and redo: each entry is the diff of the maps (the pixels that changed, old and new ids)
// plus the style choices before and after.

import { S } from "./state.js";

const LIMIT = 200;
let before = null;    // {label, inst, styles} at the start of the edit in progress

export function begin() {
  before = { label: S.label.slice(), inst: S.inst.slice(), styles: new Map(S.styles) };
}

// Ends the edit begun; true when it changed anything (then it is undoable).
export function commit() {
  const b = before; before = null;
  if (!b) return false;
  const idx = [];
  for (let i = 0; i < S.label.length; i++) {
    if (S.label[i] !== b.label[i] || S.inst[i] !== b.inst[i]) idx.push(i);
  }
  if (!idx.length && sameStyles(b.styles, S.styles)) return false;
  const I = Int32Array.from(idx);
  S.history.push({
    idx: I, oldL: I.map((i) => b.label[i]), oldI: I.map((i) => b.inst[i]),
    newL: I.map((i) => S.label[i]), newI: I.map((i) => S.inst[i]),
    oldStyles: b.styles, newStyles: new Map(S.styles),
  });
  if (S.history.length > LIMIT) S.history.shift();
  S.future = [];
  return true;
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

export function undo() {
  const e = S.history.pop();
  if (!e) return false;
  apply(e, false); S.future.push(e);
  return true;
}

export function redo() {
  const e = S.future.pop();
  if (!e) return false;
  apply(e, true); S.history.push(e);
  return true;
}

// Edits a load would discard.
export const hasEdits = () => S.history.length > 0;
