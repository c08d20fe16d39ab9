"""Style control: the feature map a features model is given at inference.

Every instance takes one centre of its label's k-means clusters (the model's feature dictionary)
and fills its pixels with it; labels absent from the dictionary get zeros. Which centre:

  - `style`: 'car=3,road=1' (Cityscapes name, the model's label name, or label id) fixes the
    centre of those labels; '*=0' fixes it for every label; specific entries override '*'.
  - otherwise a random centre, seeded by (seed, instance id) through an integer hash computed on
    the device: the same instance id keeps its look in every frame of a video, two seeds give
    two looks, and nothing waits on the host (no loop over instances, no synchronisation).
    Centre index: mix32((id mod 2**32) ^ mix32((seed mod 2**32) ^ 0x5BD1E995)) % k, with mix32
    below, so it is reproducible anywhere.
  - `style_image` + `style_inst`: E runs on the example photo; a target instance takes the photo's
    mean feature of the same instance id; else, the mean over the photo's instances of the same
    label (each instance counted once, whatever its size); else the rule above.

Per instance (the editor's choices; `style` entries starting with '#', or the `instances` and
`copies` options), which win over all of the above:

  - '#26001=3': instance 26001 takes centre 3 of its label (for ids >= 1000 the index is checked
    against label id // 1000's clusters; below 1000 the label comes from the label map, so an
    index past that label's count wraps, modulo k).
  - '#26002=#26001': instance 26002 takes exactly the feature instance 26001 gets (its chosen or
    seeded centre, or its photo feature), as if its pixels carried id 26001. Chains resolve to
    their end; a cycle is an OptionError.

The label of a target pixel is `id // 1000` for Cityscapes instance ids >= 1000, else the label
map's value there. In the example photo there is no label map, so its instance ids carry the label
(`id // 1000` for ids >= 1000, the id itself below), as Cityscapes instance maps do.

The dictionary is moved to the device once, when the StyleControl is made; `feature_map` only
gathers from it.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from .devices import resolve_device
from .errors import OptionError
from .kernels.feature_scatter import feature_scatter
from .labels import CITYSCAPES_NAMES, label_from_instance, resolve_label
from .synthesizer import from_uint8

_M32 = 0xFFFFFFFF


def mix32(x):
    """A 32-bit integer mixer (xor-shift / multiply rounds) on int64 tensors or Python ints, values
    in [0, 2**32). Multipliers stay below 2**31, so no product overflows int64."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x2C1B3C6D) & _M32
    x = x ^ (x >> 16)
    x = (x * 0x297A2D39) & _M32
    return x ^ (x >> 15)


def instance_hash(seed: int, inst: torch.Tensor) -> torch.Tensor:
    """(seed, instance id) -> int64 in [0, 2**32), elementwise on inst's device."""
    s = mix32((int(seed) & _M32) ^ 0x5BD1E995)
    return mix32((inst.long() & _M32) ^ s)


MAX_ID = 2**31 - 1


_DIGITS = re.compile(r"[0-9]+")


def as_integer(value, what: str) -> int:
    """An integer option (a seed, an instance id, a cluster index) from Python, numpy, JSON or a
    text field: an int, a numpy integer or a string of digits; OptionError naming `what` for
    anything else (1.5 or True would be truncated to a different choice without a sign)."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?[0-9]+\s*", value):
        return int(value)
    raise OptionError(what, f"{value!r} is not an integer")


def parse_entries(style: str | None) -> tuple[int | None, list[tuple[str, int, str]],
                                             dict[int, int], dict[int, int]]:
    """The one parser of style text: 'car=1,*=0,#26001=3,#26002=#26001' -> (the '*' index or
    None, [(label key, index, entry)] in order, {instance: index}, {instance: source}). Every
    entry is checked here, and each key may appear once: a label (by the same name or id), '*',
    or an instance. Label names are resolved by parse_style, which also refuses two spellings
    of one label."""
    star, labels, instances, copies = None, [], {}, {}
    seen_keys: set[str] = set()
    for entry in (style or "").split(","):
        entry = entry.strip()
        if not entry:
            continue
        key, sep, value = entry.partition("=")
        key, value = key.strip(), value.strip()
        if key.startswith("#"):
            iid_text = key[1:].strip()
            src = value[1:].strip() if value.startswith("#") else None
            ok = sep and _DIGITS.fullmatch(iid_text) and \
                _DIGITS.fullmatch(src if src is not None else value)
            if not ok:
                raise OptionError(f"--style entry {entry!r}: expected #INSTANCE=CLUSTER (e.g. "
                                  f"#26001=3) or #INSTANCE=#SOURCE (e.g. #26002=#26001)")
            iid = int(iid_text)
            if iid > MAX_ID or int(src if src is not None else value) > MAX_ID:
                raise OptionError(f"--style entry {entry!r}: instance ids and clusters fit int32")
            if iid in instances or iid in copies:
                raise OptionError(f"--style entry {entry!r}: instance {iid} is given twice")
            if src is not None:
                copies[iid] = int(src)
            else:
                instances[iid] = int(value)
            continue
        if not sep or not key or not value:
            raise OptionError(f"--style entry {entry!r}: expected LABEL=CLUSTER (e.g. car=3, "
                              f"26=0, *=0)")
        if not re.fullmatch(r"[+-]?[0-9]+", value):
            raise OptionError(f"--style entry {entry!r}: cluster index {value!r} is not an "
                              f"integer")
        if key in seen_keys:
            what = "'*'" if key == "*" else f"label {key!r}"
            raise OptionError(f"--style entry {entry!r}: {what} is given twice")
        seen_keys.add(key)
        if key == "*":
            star = int(value)
        else:
            labels.append((key, int(value), entry))
    return star, labels, instances, copies


def split_instance_style(style: str | None) -> tuple[str, dict[int, int], dict[int, int]]:
    """'car=1,#26001=3,#26002=#26001' -> ('car=1', {26001: 3}, {26002: 26001}): the label entries
    (for parse_style) and the per-instance ones (parse_entries: OptionError on a bad entry)."""
    _, _, instances, copies = parse_entries(style)
    rest = [e.strip() for e in (style or "").split(",")
            if e.strip() and not e.strip().startswith("#")]
    return ",".join(rest), instances, copies


def instance_style(instances: dict[int, int] | None = None,
                   copies: dict[int, int] | None = None) -> str:
    """The canonical '#id=k' / '#id=#src' style text of per-instance choices (sorted, so the
    same choices always give the same text)."""
    instances = {as_integer(i, "instance_styles"): as_integer(k, f"instance_styles[{i}]")
                 for i, k in (instances or {}).items()}
    copies = {as_integer(i, "copy_styles"): as_integer(c, f"copy_styles[{i}]")
              for i, c in (copies or {}).items()}
    entries = [(i, f"#{i}={k}") for i, k in instances.items()]
    entries += [(i, f"#{i}=#{c}") for i, c in copies.items()]
    return ",".join(e for _, e in sorted(entries))


def resolve_copies(copies: dict[int, int]) -> dict[int, int]:
    """{target: source} -> {target: the end of its chain}; OptionError on a cycle. Each instance
    is walked once (a chain's ends are shared), so a long chain costs its length, not its square."""
    out: dict[int, int] = {}
    for start in copies:
        path, on_path, node = [], set(), start
        while node in copies and node not in out:
            if node in on_path:
                loop = " -> ".join(f"#{i}" for i in path[path.index(node):] + [node])
                raise OptionError(f"--style: instance style copies form a cycle ({loop})")
            path.append(node)
            on_path.add(node)
            node = copies[node]
        end = out.get(node, node)
        for i in path:
            out[i] = end
    return out


def _lookup(ids: torch.Tensor, keys: torch.Tensor, values: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """ids int64 (any shape), keys sorted int64 [N>=1], values [N] -> (values at ids, found), on
    the device, without synchronising."""
    pos = torch.searchsorted(keys, ids).clamp_max_(keys.numel() - 1)
    return values[pos], keys[pos] == ids


def parse_style(style: str, label_names: dict[int, str] | None = None
                ) -> tuple[int | None, dict[int, int]]:
    """'car=3,road=1,*=0' -> (3 for '*' or None, {26: 3, 7: 1}) through parse_entries; a label
    given twice, by any spelling ('car=1,26=2'), is an OptionError."""
    star, labels, _, _ = parse_entries(style)
    fixed: dict[int, int] = {}
    spelled: dict[int, str] = {}
    for key, index, entry in labels:
        try:
            label = resolve_label(key, label_names)
        except ValueError as e:
            raise OptionError(f"--style entry {entry!r}: {e}") from None
        if label in fixed:
            raise OptionError(f"--style entry {entry!r}: label {label} is given twice "
                              f"({spelled[label]!r} and {entry!r})")
        fixed[label], spelled[label] = index, entry
    return star, fixed


def _normalise(device) -> torch.device:
    """'cuda' and 'cuda:0' are one device: key the tables by the explicit index (no device is
    the CPU here: a dictionary without an engine stays on the host)."""
    return resolve_device(device if device is not None else "cpu")


def _name(label: int, names: dict[int, str] | None) -> str:
    n = (names or CITYSCAPES_NAMES).get(label)
    return f"{n!r} ({label})" if n else f"{label}"


def _range(k: int) -> str:
    return f"0..{k - 1}" if k > 1 else "0"


class StyleControl:
    """Makes the feature map for (label, inst); construct with `from_options` or `for_engine`."""

    def __init__(self, feat_num: int, features: dict[int, torch.Tensor] | None,
                 choice: dict[int, int] | None = None, seed: int = 0,
                 photo: tuple[torch.Tensor, torch.Tensor] | None = None,
                 device: torch.device | str | None = None, *,
                 instances: dict[int, int] | None = None, copies: dict[int, int] | None = None,
                 label_names: dict[int, str] | None = None, label_nc: int = 0):
        """features: {label: [k, feat_num]} centres; choice: {label: fixed centre index} (already
        checked); photo: (instance ids int64 [N], mean features [N, feat_num]) of a style photo;
        instances: {instance id: centre index}; copies: {instance id: instance id it copies}
        (both checked here: OptionError); label_nc: the model's labels, which a copy's source
        must be of (0: not checked)."""
        self.feat_num = feat_num
        self.seed = as_integer(seed, "seed")
        self.device = _normalise(device)
        features = {int(k): torch.as_tensor(v, dtype=torch.float32) for k, v in
                    (features or {}).items() if len(v)}
        # Kept so with_instances() can derive a control with other per-instance choices.
        self._args = (features, dict(choice or {}), photo, label_names, label_nc)
        self.instances = {as_integer(i, "instance_styles"): as_integer(k, f"instance_styles[{i}]")
                          for i, k in (instances or {}).items()}
        self.copies = {as_integer(i, "copy_styles"): as_integer(c, f"copy_styles[{i}]")
                       for i, c in (copies or {}).items()}
        self._check_instances(features, label_names, label_nc)
        if any(k < 0 for k in features):
            bad = sorted(k for k in features if k < 0)
            raise OptionError(f"feature dictionary: negative label ids {bad}")
        # Padded table [L, K, F] with the cluster count per label; label ids index it directly.
        L = max(features, default=-1) + 1
        K = max((v.shape[0] for v in features.values()), default=1)
        centres = torch.zeros(max(L, 1), K, feat_num)
        counts = torch.zeros(max(L, 1), dtype=torch.int64)
        fixed = torch.full((max(L, 1),), -1, dtype=torch.int64)
        for label, c in features.items():
            centres[label, : c.shape[0]] = c
            counts[label] = c.shape[0]
        for label, index in (choice or {}).items():
            fixed[label] = index
        self._host = {"centres": centres.reshape(-1, feat_num), "K": K, "counts": counts,
                      "fixed": fixed}
        if photo is not None:
            ids, means = photo
            ids, order = torch.sort(ids.long().cpu())
            means = means.float().cpu()[order]
            labels = label_from_instance(ids)
            ulab, inv = torch.unique(labels, return_inverse=True)
            lsum = torch.zeros(ulab.numel(), feat_num).index_add_(0, inv, means)
            lmean = lsum / torch.bincount(inv, minlength=ulab.numel())[:, None].float()
            # Tables for feature_scatter, with a last column of ones that marks "found".
            one = torch.ones(ids.numel(), 1)
            self._host.update(photo_ids=ids[None], photo_table=torch.cat([means, one], 1)[None],
                              photo_labels=ulab[None],
                              photo_label_table=torch.cat([lmean, one[: ulab.numel()]], 1)[None])
        if self.copies:
            roots = resolve_copies(self.copies)
            src = torch.tensor(sorted(roots), dtype=torch.int64)
            self._host.update(copy_ids=src,
                              copy_roots=torch.tensor([roots[int(i)] for i in src]))
        if self.instances:
            ids = torch.tensor(sorted(self.instances), dtype=torch.int64)
            self._host.update(inst_ids=ids,
                              inst_pick=torch.tensor([self.instances[int(i)] for i in ids]))
        self._tables: dict[torch.device, dict] = {}
        self._tables_for(self.device)

    def _check_instances(self, features: dict[int, torch.Tensor],
                         names: dict[int, str] | None, label_nc: int) -> None:
        for iid, src in self.copies.items():
            if not (0 <= iid <= MAX_ID and 0 <= src <= MAX_ID):
                raise OptionError(f"--style '#{iid}=#{src}': instance ids are 0..{MAX_ID}")
            if iid == src:
                raise OptionError(f"--style '#{iid}=#{src}': an instance cannot copy itself")
            # Copying pixels take the source's label (id // 1000, or the id itself below 1000,
            # as feature_map reads them): one the model does not have gives zero features.
            src_label = src // 1000 if src >= 1000 else src
            if label_nc > 0 and src_label >= label_nc:
                raise OptionError(f"--style '#{iid}=#{src}': source instance {src} is of label "
                                  f"{src_label}, outside this model's labels 0..{label_nc - 1}")
            if iid in self.instances:
                raise OptionError(f"--style: instance {iid} has both a cluster and a copy")
        if not self.instances:
            return
        if not features:
            raise OptionError("--style '#...': this model has no feature dictionary (run "
                              "`p2phd-infer features` or import one)")
        K = max(v.shape[0] for v in features.values())
        for iid, index in self.instances.items():
            if not 0 <= iid <= MAX_ID:
                raise OptionError(f"--style '#{iid}={index}': instance ids are 0..{MAX_ID}")
            if iid >= 1000:
                label = iid // 1000
                if label not in features:
                    raise OptionError(f"--style '#{iid}={index}': label {_name(label, names)} "
                                      f"has no feature clusters in this model")
                k = features[label].shape[0]
                if not 0 <= index < k:
                    raise OptionError(f"--style '#{iid}={index}': cluster {index} is out of range "
                                      f"for label {_name(label, names)}: valid {_range(k)}")
            elif not 0 <= index < K:
                raise OptionError(f"--style '#{iid}={index}': cluster {index} is out of range: "
                                  f"valid {_range(K)}")

    def with_instances(self, instances: dict[int, int] | None = None,
                       copies: dict[int, int] | None = None) -> "StyleControl":
        """The same control (dictionary, label choices, seed, photo, device) with these
        per-instance choices instead of its own."""
        features, choice, photo, names, label_nc = self._args
        return StyleControl(self.feat_num, features, choice, self.seed, photo, self.device,
                            instances=instances, copies=copies, label_names=names,
                            label_nc=label_nc)

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_options(cls, info, style: str | None = None, seed: int = 0,
                     style_image: Path | None = None, style_inst: Path | None = None,
                     encoder=None, device=None, instances: dict[int, int] | None = None,
                     copies: dict[int, int] | None = None) -> "StyleControl":
        """info: EngineInfo (.config, .features, .label_names). ValueError for a model without
        features, an unknown label, a cluster index out of range, or a bad style photo.
        instances/copies: per-instance choices, merged over the style's '#' entries."""
        cfg = info.config
        seed = as_integer(seed, "seed")          # refused even where it changes nothing
        style, own_instances, own_copies = split_instance_style(style)
        instances = {**own_instances, **(instances or {})}
        copies = {**own_copies, **(copies or {})}
        if cfg.feat_num <= 0:
            if style or style_image or instances or copies:
                raise OptionError("this model takes no instance features (feat_num 0); --style and "
                                 "--style-image need a model trained with features")
            return cls(0, None, device=device)
        names = info.label_names
        features = {int(k): torch.as_tensor(v, dtype=torch.float32)
                    for k, v in (info.features or {}).items()}
        for label, c in features.items():
            if c.dim() != 2 or c.shape[1] != cfg.feat_num:
                raise OptionError(f"feature dictionary: label {label} has centres of shape "
                                 f"{tuple(c.shape)}, the model uses {cfg.feat_num} features")
        choice = {}
        if style:
            choice = cls._check_style(style, features, names)
        photo = None
        if style_image is not None:
            photo = photo_instance_means(info, style_image, style_inst, encoder)
        return cls(cfg.feat_num, features, choice, seed, photo, device, instances=instances,
                   copies=copies, label_names=names, label_nc=cfg.label_nc)

    @classmethod
    def for_engine(cls, engine, style: str | None = None, seed: int = 0,
                   style_image: Path | None = None, style_inst: Path | None = None
                   ) -> "StyleControl":
        """For an engine from `open_engine`: its dictionary, its encoder (PyTorch engines) and its
        device."""
        return cls.from_options(engine.info, style, seed, style_image, style_inst,
                                getattr(engine, "encoder", None), engine.device)

    @staticmethod
    def _check_style(style: str, features: dict[int, torch.Tensor],
                     names: dict[int, str] | None) -> dict[int, int]:
        star, fixed = parse_style(style, names)
        if not features:
            raise OptionError(f"--style {style!r}: this model has no feature dictionary (run "
                             f"`p2phd-infer features` or import one)")
        choice = {}
        if star is not None:
            for label in sorted(features):
                k = features[label].shape[0]
                if label not in fixed and not 0 <= star < k:
                    kmin = min(v.shape[0] for v in features.values())
                    raise OptionError(
                        f"--style '*={star}': cluster {star} is out of range for label "
                        f"{_name(label, names)}, which has clusters {_range(k)}; '*' needs an "
                        f"index every label has ({_range(kmin)})")
                choice[label] = star
        for label, index in fixed.items():
            if label not in features:
                have = ", ".join(_name(l_, names) for l_ in sorted(features))
                raise OptionError(f"--style: label {_name(label, names)} has no feature clusters in "
                                 f"this model (labels with clusters: {have})")
            k = features[label].shape[0]
            if not 0 <= index < k:
                raise OptionError(f"--style: cluster {index} is out of range for label "
                                 f"{_name(label, names)}: valid {_range(k)}")
            choice[label] = index
        return choice

    # ------------------------------------------------------------------ the feature map

    def _tables_for(self, device: torch.device) -> dict:
        """The tables on `device`: made once per device (here, at construction), then reused."""
        device = _normalise(device)
        t = self._tables.get(device)
        if t is None:
            t = {k: v.to(device) if isinstance(v, torch.Tensor) else v
                 for k, v in self._host.items()}
            self._tables[device] = t
        return t

    @torch.no_grad()
    def feature_map(self, label: torch.Tensor, inst: torch.Tensor) -> torch.Tensor:
        """label, inst int32 [B,1,H,W] -> float32 [B,F,H,W] on their device."""
        B, _, H, W = inst.shape
        t = self._tables_for(inst.device)
        if self.feat_num == 0:
            return torch.zeros(B, 0, H, W, device=inst.device)
        ids = inst.long()
        copied = None
        if "copy_ids" in t:
            # A copying instance's pixels are looked up as its source's: same label, same hash,
            # same choice, same photo feature.
            root, copied = _lookup(ids, t["copy_ids"], t["copy_roots"])
            ids = torch.where(copied, root, ids)
        lab = torch.where(ids >= 1000, torch.div(ids, 1000, rounding_mode="floor"), label.long())
        if copied is not None:
            lab = torch.where(copied & (ids < 1000), ids, lab)
        L = t["counts"].shape[0]
        inside = (lab >= 0) & (lab < L)
        labc = lab.clamp(0, L - 1)
        k = torch.where(inside, t["counts"][labc], 0)
        random = instance_hash(self.seed, ids) % k.clamp_min(1)
        fixed = t["fixed"][labc]
        pick = torch.where(fixed >= 0, fixed, random)
        chosen = None
        if "inst_ids" in t:
            index, chosen = _lookup(ids, t["inst_ids"], t["inst_pick"])
            pick = torch.where(chosen, index % k.clamp_min(1), pick)
        feat = torch.nn.functional.embedding(labc * t["K"] + pick, t["centres"])  # [B,1,H,W,F]
        feat = feat.squeeze(1).permute(0, 3, 1, 2) * (k > 0)
        if "photo_ids" in t:
            # The same instance id in the photo, else the photo's mean over the same label: sorted
            # lookups per pixel (the feature_scatter kernel), no synchronisation.
            F = self.feat_num
            by_id = feature_scatter(ids.to(inst.dtype), t["photo_ids"].expand(B, -1),
                                    t["photo_table"].expand(B, -1, -1))
            by_lab = feature_scatter(lab, t["photo_labels"].expand(B, -1),
                                     t["photo_label_table"].expand(B, -1, -1))
            photo = torch.where(by_id[:, F:] > 0, by_id[:, :F],
                                torch.where(by_lab[:, F:] > 0, by_lab[:, :F], feat))
            # An instance's own cluster choice wins over the photo.
            feat = photo if chosen is None else torch.where(chosen, feat, photo)
        return feat.contiguous()


def photo_instance_means(info, style_image: Path, style_inst: Path | None, encoder
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Run E (on its own device) on an example photo -> (instance ids int64 [N], mean features
    float32 [N,F]) on the CPU."""
    from .image_io import InputError, read_id_png, read_rgb
    from .instance_features import encode_photo, instance_table
    if encoder is None:
        raise OptionError("--style-image needs the model's encoder E: use a model.pt engine whose "
                         "checkpoint holds an encoder")
    if style_inst is None:
        raise OptionError(f"--style-image {style_image}: needs its instance map (--style-instances)")
    rgb = read_rgb(style_image)
    inst = read_id_png(style_inst)
    if rgb.shape[:2] != inst.shape:
        raise InputError(style_image, f"size {rgb.shape[1]}x{rgb.shape[0]} differs from its "
                                      f"instance map {style_inst} ({inst.shape[1]}x{inst.shape[0]})")
    image = from_uint8(torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None])
    inst_t = torch.from_numpy(inst)[None, None]
    enc_dev = next(encoder.parameters()).device
    try:
        with torch.inference_mode():
            feat = encode_photo(encoder, info.config, image.to(enc_dev), inst_t.to(enc_dev))
    except ValueError as e:
        raise InputError(style_image, str(e)) from None
    ids, means, _ = instance_table(feat[0], inst_t[0].to(enc_dev))
    return ids.cpu(), means.cpu()
