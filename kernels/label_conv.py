"""Label-aware first layers: a 7x7 convolution on a one-hot label map is a table lookup-and-sum.

pix2pixHD's first layers are ReflectionPad2d(3) + Conv2d(k=7) on [one-hot(label_nc), edge, feat].
At every tap exactly one one-hot channel is 1, so the channel sum collapses to one weight column:

    out[o,y,x] = bias[o] + sum_{dy,dx} T[dy,dx, code(r(y+dy-3), r(x+dx-3)), o]  (+ feature conv)

with r() the reflection of the padding, code = 2*class + edge, and the table
T[tap, 2*l + e, o] = W[o, l, tap] + e * W[o, edge_ch, tap] (the edge channel is 0/1 too). A label
outside [0, label_nc) has an all-zero one-hot (the encoding is an equality against a range), so it
gets the extra class row l = label_nc with no class weight. This is exact, not an approximation:
one fp32 add per table entry, then the same sum a convolution does, in another order.

G1 of the local model sees the one-hot average-pooled 2x (AvgPool2d(3, 2, 1,
count_include_pad=False)), which is linear in the one-hot, so its first convolution folds too
(`pool=True`): every tap reads the 3x3 window of full-resolution codes under its pooled pixel,
sums their table rows and divides by the window's in-image count (4, 6 or 9 pixels at borders).
Feature channels (feat_num > 0) are not one-hot: callers convolve them normally and pass the
result as `add`, which the kernel sums in.

Both kernels read a per-pixel code map (label_codes: uint8, computed once per frame and shared by
G1's and the enhancer's first layers). `encode_codes` is the dense alternative the lookup is
measured against: the one-hot (+ edge), pooled when asked, written in one pass with channels
padded to a multiple of 8 for a cuDNN convolution (LabelConv(lookup=False)).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..labels import encode_labels
from ._backend import check_index_range, index64, jit, next_pow2, tl, use_triton

TAPS = 49  # 7 x 7


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def pooled_size(n: int) -> int:
    """Output length of AvgPool2d(3, stride 2, padding 1) on length n."""
    return (n - 1) // 2 + 1


def label_conv_reference(label: torch.Tensor, inst: torch.Tensor | None, weight: torch.Tensor,
                         bias: torch.Tensor | None, label_nc: int, use_instance: bool,
                         feat: torch.Tensor | None = None, pool: bool = False) -> torch.Tensor:
    """The definition: encode the ids (one-hot, edges, features), pool 2x if asked, then
    ReflectionPad2d(3) + Conv2d(7). Computes in weight.dtype."""
    x = encode_labels(label, inst, label_nc, use_instance, feat, dtype=weight.dtype)
    if pool:
        x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
    return F.conv2d(F.pad(x, (3, 3, 3, 3), mode="reflect"), weight, bias)


def build_table(weight: torch.Tensor, label_nc: int, use_instance: bool,
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Conv weight [O, Cin, 7, 7] -> table [49, (label_nc+1)*(1+use_instance), O_pad] in dtype
    (entries are formed in fp32 and rounded once; fp16 halves the bytes every gather moves).

    Row code = class * (1 + use_instance) + edge; class label_nc stands for "no class" (an id
    outside the range). O is padded to a power of two (>= 16) with zeros, so the kernel's gathers
    need no channel mask. Feature channels (after the edge channel) are not part of the table."""
    O, cin, kh, kw = weight.shape
    if (kh, kw) != (7, 7):
        raise ValueError(f"label conv needs a 7x7 kernel, got {kh}x{kw}")
    if cin < label_nc + int(use_instance):
        raise ValueError(f"weight has {cin} input channels, fewer than label_nc={label_nc}"
                         f" + edge={int(use_instance)}")
    w = weight.detach().to(torch.float32).permute(2, 3, 1, 0).reshape(TAPS, cin, O)  # [tap, c, o]
    cls = torch.zeros(TAPS, label_nc + 1, O, dtype=torch.float32, device=weight.device)
    cls[:, :label_nc] = w[:, :label_nc]
    if use_instance:
        edge = w[:, label_nc][:, None, :]                       # [tap, 1, o]
        table = torch.stack([cls, cls + edge], dim=2)           # [tap, class, edge, o]
    else:
        table = cls[:, :, None, :]
    table = table.reshape(TAPS, -1, O)
    o_pad = max(16, next_pow2(O))
    return F.pad(table, (0, o_pad - O)).to(dtype).contiguous()


def padded_bias(bias: torch.Tensor | None, out_channels: int, o_pad: int,
                device: torch.device) -> torch.Tensor:
    b = torch.zeros(o_pad, dtype=torch.float32, device=device)
    if bias is not None:
        b[:out_channels] = bias.detach().to(torch.float32)
    return b


def label_codes(label: torch.Tensor, edge: torch.Tensor | None, label_nc: int) -> torch.Tensor:
    """Table row per pixel: class * (1 + has_edge) + edge, with class label_nc for ids outside
    [0, label_nc). uint8 when it fits (the kernel reads it 49 or 441 times per output pixel)."""
    cls = torch.where((label >= 0) & (label < label_nc), label, torch.full_like(label, label_nc))
    code = cls * 2 + edge.to(cls.dtype) if edge is not None else cls
    ncode = (label_nc + 1) * (2 if edge is not None else 1)
    return code.to(torch.uint8 if ncode <= 256 else torch.int32)


@jit
def _label_conv_kernel(code_ptr, table_ptr, bias_ptr, add_ptr, out_ptr,
                       H, W, OH, OW, scb, sch, scw,
                       sab, sac, sah, saw, sob, soc, soh, sow,
                       O, N,
                       NCODE: tl.constexpr, BLOCK_O: tl.constexpr,
                       HAS_ADD: tl.constexpr, POOL: tl.constexpr, BLOCK_P: tl.constexpr):
    # One program: BLOCK_P output pixels (of the whole batch, flattened) x all output channels.
    # The 49 taps walk the table tap by tap, so the working set is one tap's NCODE x BLOCK_O slice.
    pix = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = pix < N
    b = (pix // (OH * OW)).to(tl.int64)
    rem = pix % (OH * OW)
    y = rem // OW
    x = rem % OW
    co = tl.arange(0, BLOCK_O)
    code_base = code_ptr + b * scb
    acc = tl.zeros([BLOCK_P, BLOCK_O], dtype=tl.float32) + tl.load(bias_ptr + co)[None, :]
    if POOL:
        # Runtime loops throughout: unrolling 49 x 9 gathers makes a kernel that takes minutes
        # to compile.
        for dy in range(7):
            qy = y + dy - 3
            qy = tl.where(qy < 0, -qy, qy)
            qy = tl.where(qy >= OH, 2 * OH - 2 - qy, qy)
            # Pooled row qy averages full-res rows 2qy-1..2qy+1 inside the image
            # (count_include_pad=False); likewise for columns.
            rows = tl.minimum(2 * qy + 1, H - 1) - tl.maximum(2 * qy - 1, 0) + 1
            for dx in range(7):
                qx = x + dx - 3
                qx = tl.where(qx < 0, -qx, qx)
                qx = tl.where(qx >= OW, 2 * OW - 2 - qx, qx)
                cols = tl.minimum(2 * qx + 1, W - 1) - tl.maximum(2 * qx - 1, 0) + 1
                inv = 1.0 / tl.maximum(rows * cols, 1).to(tl.float32)  # masked pixels: no 0/0
                tap = table_ptr + (dy * 7 + dx) * (NCODE * BLOCK_O)
                wsum = tl.zeros([BLOCK_P, BLOCK_O], dtype=tl.float32)
                for a in range(3):
                    u = 2 * qy - 1 + a
                    for c in range(3):
                        v = 2 * qx - 1 + c
                        ok = pmask & (u >= 0) & (u < H) & (v >= 0) & (v < W)
                        code = tl.load(code_base + u * sch + v * scw, mask=ok, other=0)
                        wsum += tl.load(tap + code.to(tl.int32)[:, None] * BLOCK_O + co[None, :],
                                        mask=ok[:, None], other=0.0).to(tl.float32)
                acc += wsum * inv[:, None]
    else:
        for dy in range(7):
            qy = y + dy - 3
            qy = tl.where(qy < 0, -qy, qy)
            qy = tl.where(qy >= OH, 2 * OH - 2 - qy, qy)
            for dx in tl.static_range(7):
                qx = x + dx - 3
                qx = tl.where(qx < 0, -qx, qx)
                qx = tl.where(qx >= OW, 2 * OW - 2 - qx, qx)
                tap = table_ptr + (dy * 7 + dx) * (NCODE * BLOCK_O)
                # Masked pixels read row 0, a valid row, so the gather needs no mask.
                code = tl.load(code_base + qy * sch + qx * scw, mask=pmask, other=0)
                acc += tl.load(tap + code.to(tl.int32)[:, None] * BLOCK_O
                               + co[None, :]).to(tl.float32)
    omask = pmask[:, None] & (co < O)[None, :]
    # Addresses of the activations in int64 (O x OH x OW may pass 2^31); indices stay int32.
    if HAS_ADD:
        acc += tl.load(add_ptr + b[:, None] * sab + index64(co, sac)[None, :]
                       + index64(y, sah)[:, None] + index64(x, saw)[:, None],
                       mask=omask, other=0.0).to(tl.float32)
    tl.store(out_ptr + b[:, None] * sob + index64(co, soc)[None, :] + index64(y, soh)[:, None]
             + index64(x, sow)[:, None], acc.to(out_ptr.dtype.element_ty), mask=omask)


def label_conv_triton(code: torch.Tensor, table: torch.Tensor, bias: torch.Tensor,
                      out_channels: int, pool: bool = False, add: torch.Tensor | None = None,
                      out_dtype: torch.dtype = torch.float32,
                      channels_last: bool = False, tile_p: int | None = None) -> torch.Tensor:
    """code [B,1,H,W] from label_codes, table from build_table, bias from padded_bias
    -> [B, out_channels, OH, OW] (OH, OW = H, W, or pooled_size of them with pool).
    `add` [B, out_channels, OH, OW] (any layout) is summed in: the feature channels' conv.
    tile_p (a power of two) overrides the pixels per program."""
    B, _, H, W = code.shape
    OH, OW = (pooled_size(H), pooled_size(W)) if pool else (H, W)
    if OH < 4 or OW < 4:
        raise ValueError(f"reflection padding 3 needs at least 4x4, got {OW}x{OH}")
    block_o = table.shape[2]
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out = torch.empty(B, out_channels, OH, OW, dtype=out_dtype, device=code.device,
                      memory_format=fmt)
    a = add if add is not None else out
    if add is not None and tuple(add.shape) != tuple(out.shape):
        raise ValueError(f"add has shape {tuple(add.shape)}, expected {tuple(out.shape)}")
    # Pixel indices (of the batch, flattened) and code offsets are int32.
    check_index_range("label_conv: pixels per launch", B * H * W)
    n = B * OH * OW
    block_p = 128 if block_o <= 32 else 64
    if code.device.type == "cpu":
        # Triton's interpreter pays per operation, not per element: one program in all.
        block_p = min(8192, max(block_p, next_pow2(n)))
    block_p = tile_p or block_p   # tests: several programs, blocks that span two samples
    grid = (_cdiv(n, block_p),)
    _label_conv_kernel[grid](
        code, table, bias, a, out, H, W, OH, OW,
        code.stride(0), code.stride(2), code.stride(3),
        a.stride(0), a.stride(1), a.stride(2), a.stride(3),
        out.stride(0), out.stride(1), out.stride(2), out.stride(3),
        out_channels, n, NCODE=table.shape[1], BLOCK_O=block_o, HAS_ADD=add is not None,
        POOL=pool, BLOCK_P=block_p, num_warps=4)
    return out


@jit
def _encode_codes_kernel(code_ptr, out_ptr, H, W, OH, OW, scb, sch, scw, sob, soc, soh, sow,
                         C, N, NLAB: tl.constexpr, HAS_EDGE: tl.constexpr, POOL: tl.constexpr,
                         WIN: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    # One program: BLOCK_P pixels x one block of BLOCK_C channels (axis 1). The channel count is
    # padded to a multiple of BLOCK_C; channels from C on are masked at the store.
    pix = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = pix < N
    b = (pix // (OH * OW)).to(tl.int64)
    rem = pix % (OH * OW)
    y = rem // OW
    x = rem % OW
    ch = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    acc = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    for a in tl.static_range(WIN):      # WIN = 3 (the pooling window) or 1
        for c in tl.static_range(WIN):
            if POOL:
                u = 2 * y - 1 + a
                v = 2 * x - 1 + c
            else:
                u = y
                v = x
            ok = pmask & (u >= 0) & (u < H) & (v >= 0) & (v < W)
            code = tl.load(code_ptr + b * scb + u * sch + v * scw, mask=ok, other=0).to(tl.int32)
            if HAS_EDGE:
                cls = code // 2
                hit = ((cls[:, None] == ch[None, :]) & (cls < NLAB)[:, None]) | (
                    (ch[None, :] == NLAB) & ((code % 2) == 1)[:, None])
            else:
                hit = (code[:, None] == ch[None, :]) & (code < NLAB)[:, None]
            acc += tl.where(hit & ok[:, None], 1.0, 0.0)
    if POOL:
        rows = tl.minimum(2 * y + 1, H - 1) - tl.maximum(2 * y - 1, 0) + 1
        cols = tl.minimum(2 * x + 1, W - 1) - tl.maximum(2 * x - 1, 0) + 1
        acc = acc / tl.maximum(rows * cols, 1).to(tl.float32)[:, None]
    tl.store(out_ptr + b[:, None] * sob + index64(ch, soc)[None, :] + index64(y, soh)[:, None]
             + index64(x, sow)[:, None], acc.to(out_ptr.dtype.element_ty),
             mask=pmask[:, None] & (ch < C)[None, :])


ENCODE_BLOCK_C = 16   # channels per program of the encode pass (see encode_codes)


def encode_codes(code: torch.Tensor, label_nc: int, has_edge: bool, channels: int,
                 pool: bool = False, dtype: torch.dtype = torch.float32,
                 channels_last: bool = False, tile_p: int | None = None,
                 tile_c: int | None = None) -> torch.Tensor:
    """codes -> the dense one-hot (+ edge) input, average-pooled 2x when `pool`, with zero
    channels up to `channels` (a multiple of 8 keeps cuDNN's tensor-core convolutions fed). One
    pass: the full-resolution one-hot of the pooled case is never written. tile_p, tile_c
    (powers of two >= 16) override the pixels and channels per program (tests)."""
    B, _, H, W = code.shape
    OH, OW = (pooled_size(H), pooled_size(W)) if pool else (H, W)
    if channels < label_nc + int(has_edge):
        raise ValueError(f"channels={channels} is fewer than the encoding's "
                         f"{label_nc + int(has_edge)}")
    check_index_range("encode_codes: pixels per launch", B * H * W)  # int32 pixel indices
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out = torch.empty(B, channels, OH, OW, dtype=dtype, device=code.device, memory_format=fmt)
    n = B * OH * OW
    # 16 channels per program, the channel count padded up to a multiple of 16 (40 -> 48, the
    # last 8 masked): one program on all of next_pow2(40) = 64 channels of the pooled pass
    # needed 255 registers and spilled 2.5 KB per thread on sm_90 (tests/sm90_ptxas.py).
    block_c = ENCODE_BLOCK_C
    # Each thread holds BLOCK_P / 8 pixels' codes for all 9 window taps: 32 pooled pixels per
    # program need 69 registers, 128 need 252 (sm_90, fp16 out).
    block_p = 32 if pool else 64
    if code.device.type == "cpu":
        # The interpreter pays per operation: one program on every channel and pixel.
        block_c = max(16, next_pow2(channels))
        block_p = min(8192, max(16, next_pow2(n)))
    block_c = tile_c or block_c
    block_p = tile_p or block_p
    _encode_codes_kernel[(_cdiv(n, block_p), _cdiv(channels, block_c))](
        code, out, H, W, OH, OW, code.stride(0), code.stride(2), code.stride(3),
        out.stride(0), out.stride(1), out.stride(2), out.stride(3), channels, n,
        NLAB=label_nc, HAS_EDGE=has_edge, POOL=pool, WIN=3 if pool else 1, BLOCK_C=block_c,
        BLOCK_P=block_p,
        num_warps=4)
    return out


class LabelConv:
    """One first layer of pix2pixHD (ReflectionPad2d(3) + Conv2d(7) on the encoded ids, pooled 2x
    first for G1 of the local model), prepared once from its conv weight.

    lookup=True: the table lookup-and-sum kernel. lookup=False: the dense encoding (one Triton
    pass from codes, channels padded to a multiple of 8) and a cuDNN convolution; the same
    function, kept to measure the lookup against. Feature channels are convolved normally either
    way and summed in."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, label_nc: int,
                 use_instance: bool, pool: bool = False, lookup: bool = True,
                 table_dtype: torch.dtype = torch.float32):
        self.label_nc = label_nc
        self.use_instance = use_instance
        self.pool = pool
        self.lookup = lookup
        self.out_channels = weight.shape[0]
        n_onehot = label_nc + int(use_instance)
        w = weight.detach()
        self.feat_weight = w[:, n_onehot:] if w.shape[1] > n_onehot else None
        if lookup:
            self.table = build_table(w, label_nc, use_instance, table_dtype)
            self.bias = padded_bias(bias, self.out_channels, self.table.shape[2], w.device)
        else:
            self.channels = -(-n_onehot // 8) * 8
            self.dense_weight = F.pad(w[:, :n_onehot], (0, 0, 0, 0, 0, self.channels - n_onehot))
            self.bias = None if bias is None else bias.detach()

    def to(self, device: torch.device, dtype: torch.dtype,
           channels_last: bool = False) -> "LabelConv":
        """The lookup table keeps its dtype and the lookup bias stays fp32 (summed in fp32);
        the convolution weights take dtype, and the channels_last format when asked."""
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        if self.lookup:
            self.table = self.table.to(device)
            self.bias = self.bias.to(device)
        else:
            self.dense_weight = self.dense_weight.to(device, dtype).contiguous(memory_format=fmt)
            self.bias = None if self.bias is None else self.bias.to(device, dtype)
        if self.feat_weight is not None:
            self.feat_weight = self.feat_weight.to(device, dtype).contiguous(memory_format=fmt)
        return self

    @staticmethod
    def _conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
              channels_last: bool) -> torch.Tensor:
        # ReflectionPad2d(3) + Conv2d(7). The reflection pad may return NCHW from a
        # channels_last input, and a convolution with one NCHW operand runs NCHW: both
        # operands are made channels_last (no copy when they already are).
        x = F.pad(x, (3, 3, 3, 3), mode="reflect")
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
            weight = weight.contiguous(memory_format=torch.channels_last)
        return F.conv2d(x, weight, bias)

    def feature_part(self, feat: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
        x = feat.to(self.feat_weight.dtype)
        if self.pool:
            x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
        return self._conv(x, self.feat_weight, None, channels_last)

    def dense_conv(self, x: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
        """The convolution of the dense path, on encode_codes' output."""
        return self._conv(x, self.dense_weight, self.bias, channels_last)

    def __call__(self, label: torch.Tensor, edge: torch.Tensor | None,
                 feat: torch.Tensor | None = None, out_dtype: torch.dtype = torch.float32,
                 channels_last: bool = False) -> torch.Tensor:
        if self.use_instance != (edge is not None):
            raise ValueError("edge map: pass edge exactly when the model uses instances")
        return self.from_codes(label_codes(label, edge, self.label_nc), feat, out_dtype,
                               channels_last)

    def from_codes(self, code: torch.Tensor, feat: torch.Tensor | None = None,
                   out_dtype: torch.dtype = torch.float32,
                   channels_last: bool = False) -> torch.Tensor:
        """With the codes computed once and shared by several first layers."""
        if (self.feat_weight is None) != (feat is None):
            raise ValueError("feature channels: pass feat exactly when the weight has them")
        add = self.feature_part(feat, channels_last) if feat is not None else None
        if self.lookup:
            return label_conv_triton(code, self.table, self.bias, self.out_channels, self.pool,
                                     add, out_dtype, channels_last)
        x = encode_codes(code, self.label_nc, self.use_instance, self.channels, self.pool,
                         self.dense_weight.dtype, channels_last)
        out = self.dense_conv(x, channels_last)
        out = out if add is None else out + add
        return out.to(out_dtype)


def label_conv(label: torch.Tensor, inst: torch.Tensor | None, weight: torch.Tensor,
               bias: torch.Tensor | None, label_nc: int, use_instance: bool,
               feat: torch.Tensor | None = None, pool: bool = False,
               backend: str = "auto") -> torch.Tensor:
    """The first layer on ids: Triton lookup where it runs, else the reference. For repeated use
    build a LabelConv once (the table costs a weight permute)."""
    if not use_triton(backend, label, weight):
        return label_conv_reference(label, inst, weight, bias, label_nc, use_instance, feat, pool)
    from ..labels import edge_map
    edge = edge_map(inst) if use_instance else None
    lc = LabelConv(weight, bias, label_nc, use_instance, pool)
    return lc(label, edge, feat, out_dtype=weight.dtype)
