"""The pix2pixHD trainer, both stages, in one file read top to bottom: the options, the pieces a
run is built from, `Training` (one stage's networks and optimizers with its three units: a
training step, a save, a restore), and `train()`, which builds one and runs the loop.

Stage global: G1 (and the encoder E with instance features) at low resolution.
Stage local:  G1 loaded from a global model.pt; the local enhancer trains alone (G1 and E frozen)
              for niter_fix_global epochs, then G1 + enhancer + E train together under a NEW Adam
              over all their parameters. (NVIDIA's public script keeps stepping the optimizer built
              for the frozen phase: G1 is never unfrozen and G's learning rate never decays. Here
              the optimizer is rebuilt at the switch and the schedule is applied to whichever
              optimizer is live.)

Per step, the reference's numerics: LSGAN + feature matching + VGG for G, 0.5*(fake+real) LSGAN
for D, both computed with the same D (before its update), then G and D step. Adam(lr, 0.5, 0.999),
lr constant for niter epochs then linear to 0 over niter_decay (per step, not per epoch).
The official switches: --no-ganFeat-loss (no feature matching; D then returns only its scores,
and its keys are the official flat ones), --no-lsgan (vanilla GAN, train/losses.py gan_loss),
--pool-size N (D's fake pass through the image pool, train/pool.py).

Networks built from scratch (G, E, D) get the official initialisation (init_weights: conv weights
~ N(0, 0.02)); loaded weights (G1 and E of --load-global, D of --load-d, a resumed state) replace
it. --load-d takes an official latest_net_D.pth (or this project's D keys, which are the same).

Outputs in <checkpoints_dir>/<name>/: model.pt (the project checkpoint, loadable by
p2phd_infer.checkpoint.load_checkpoint), trainer_state.pt (everything --resume needs), loss_log.csv,
samples/step_NNNNNNN.png (label | generated | real). Multi-GPU: launch with torchrun; rank 0 writes.
"""
from __future__ import annotations

import csv
import dataclasses
import math
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn

from p2phd_infer.checkpoint import (Checkpoint, check_state, load_checkpoint, save_checkpoint,
                                    torch_load)
from p2phd_infer.engines.base import resolve_device
from p2phd_infer.errors import CheckpointError, Error, OptionError
from p2phd_infer.files import check_writable, remove_stale_temps, write_atomic
from p2phd_infer.config import ModelConfig
from p2phd_infer.image_io import write_image
from p2phd_infer.instance_features import encoder_features
from p2phd_infer.label_names import read_label_names
from p2phd_infer.labels import CITYSCAPES_NAMES, encode_labels
from p2phd_infer.networks import build_encoder, build_generator

from .datasets import PairedDataset
from .discriminator import MultiscaleDiscriminator, fit_discriminator, load_discriminator
from .options import TrainOptions, flag
from .pool import ImagePool
from . import losses as loss_module
from .losses import VGG19Features, VGGLoss, feature_matching_loss, gan_loss
from .visual import sample_grid

STATE_FILE = "trainer_state.pt"
LOSS_NAMES = ("G_GAN", "G_GAN_Feat", "G_VGG", "D_real", "D_fake")
# Options a resumed run may change; everything else comes from the saved run.
RUNTIME_OPTIONS = ("max_steps", "save_every", "device", "num_workers", "dataroot", "progress",
                   "name", "checkpoints_dir")


# ----------------------------------------------------------------------------- setup helpers

def resolve_config(opts: TrainOptions) -> tuple[ModelConfig, Checkpoint | None]:
    """The architecture of this stage; for stage local also the loaded global checkpoint."""
    if opts.stage == "global":
        feat_num = (3 if opts.feat_num is None else opts.feat_num) if opts.instance_feat else 0
        cfg = ModelConfig(
            label_nc=35 if opts.label_nc is None else opts.label_nc,
            use_instance=not opts.no_instance, feat_num=feat_num, netG="global",
            ngf=64 if opts.ngf is None else opts.ngf,
            n_downsample_global=4 if opts.n_downsample_global is None else opts.n_downsample_global,
            n_blocks_global=9 if opts.n_blocks_global is None else opts.n_blocks_global,
            n_local_enhancers=0, n_blocks_local=0,
            nef=16 if opts.nef is None else opts.nef,
            n_downsample_E=4 if opts.n_downsample_E is None else opts.n_downsample_E)
        return cfg, None
    if opts.stage != "local":
        raise OptionError(f"--stage must be global or local, not {opts.stage!r}")
    if not opts.load_global:
        raise OptionError("--stage local needs --load-global PATH (the global stage's model.pt)")
    g = load_checkpoint(opts.load_global)
    gc = g.config
    if gc.netG != "global":
        raise CheckpointError(f"{opts.load_global}: holds a {gc.netG} generator; --load-global "
                              "needs the global stage's model.pt")
    scale = 2 ** opts.n_local_enhancers
    if gc.ngf % scale:
        raise CheckpointError(f"{opts.load_global}: G1 has ngf {gc.ngf}, not divisible by "
                              f"2**n_local_enhancers = {scale}")
    conflicts = []
    for flag, mine, theirs in (("--label-nc", opts.label_nc, gc.label_nc),
                               ("--ngf", opts.ngf, gc.ngf // scale),
                               ("--n-downsample-global", opts.n_downsample_global,
                                gc.n_downsample_global),
                               ("--n-blocks-global", opts.n_blocks_global, gc.n_blocks_global),
                               ("--nef", opts.nef if opts.instance_feat else None, gc.nef),
                               ("--feat-num", opts.feat_num if opts.instance_feat else None,
                                gc.feat_num)):
        if mine is not None and mine != theirs:
            conflicts.append(f"{flag} {mine} but the loaded G1 implies {theirs}")
    if opts.instance_feat and (gc.feat_num == 0 or g.encoder is None):
        conflicts.append("--instance-feat but the checkpoint has no encoder")
    if opts.no_instance and gc.use_instance:
        conflicts.append("--no-instance but G1 was trained with instance edges")
    if conflicts:
        raise CheckpointError(f"{opts.load_global}: " + "; ".join(conflicts))
    cfg = dataclasses.replace(gc, netG="local", ngf=gc.ngf // scale,
                              n_local_enhancers=opts.n_local_enhancers,
                              n_blocks_local=opts.n_blocks_local)
    return cfg, g


def run_label_names(opts: TrainOptions, cfg: ModelConfig, state: dict | None,
                    g1_ckpt: Checkpoint | None) -> tuple[dict[int, str] | None,
                                                         dict[int, list[int]] | None]:
    """The label names (and colours) model.pt gets: a resumed run's saved ones, else
    --label-names FILE (checked against label_nc), else the loaded G1's (stage local), else the
    Cityscapes names for label_nc 35."""
    if state is not None and "label_names" in state:
        return state["label_names"], state.get("label_colors")
    if opts.label_names:
        return read_label_names(opts.label_names, cfg.label_nc)
    if g1_ckpt is not None:
        return g1_ckpt.label_names, g1_ckpt.extra.get("label_colors")
    return (dict(CITYSCAPES_NAMES) if cfg.label_nc == 35 else None), None


def load_g1(G: nn.Module, g1_state: dict[str, torch.Tensor], path: str) -> None:
    """Copy a global generator's weights into the local model's G1 (`model.*`); G1's output layers
    (pad, conv7, tanh) do not exist in the local model and are left out."""
    own = {k: v for k, v in G.state_dict().items() if k.startswith("model.")}
    missing = [k for k in own if k not in g1_state]
    bad = [k for k in own if k in g1_state and g1_state[k].shape != own[k].shape]
    if missing or bad:
        raise CheckpointError(f"{path}: G1 does not fit the local model (missing {missing[:3]}, "
                              f"shape mismatch {bad[:3]})")
    G.load_state_dict({k: g1_state[k] for k in own}, strict=False)


def lr_at(opts: TrainOptions, step: int, steps_per_epoch: int) -> float:
    """Constant for niter epochs, then linear to 0 over niter_decay epochs (per step)."""
    epoch = step / steps_per_epoch
    if epoch < opts.niter or opts.niter_decay <= 0:
        return opts.lr
    return opts.lr * max(0.0, 1.0 - (epoch - opts.niter) / opts.niter_decay)


def init_weights(net: nn.Module) -> nn.Module:
    """The official initialisation (its weights_init, applied to G, E and D when they are made):
    every convolution's weight (Conv and ConvTranspose) ~ N(0, 0.02), BatchNorm2d weights
    ~ N(1, 0.02) and biases 0 (this project's networks have no BatchNorm: InstanceNorm without
    affine). Conv biases keep PyTorch's default init, as in the official code. Draws from
    torch's global generator (the trainer seeds it)."""
    with torch.no_grad():
        for m in net.modules():
            name = type(m).__name__
            if "Conv" in name and isinstance(getattr(m, "weight", None), torch.Tensor):
                m.weight.normal_(0.0, 0.02)
            elif "BatchNorm2d" in name and getattr(m, "weight", None) is not None:
                m.weight.normal_(1.0, 0.02)
                m.bias.zero_()
    return net


def enhancer_parameters(G: nn.Module) -> list[nn.Parameter]:
    """The local enhancers' parameters (model{n}_1, model{n}_2), not G1's (`model.`)."""
    return [p for k, p in G.named_parameters() if not k.startswith("model.")]


def encode_features(E: nn.Module, image: torch.Tensor, inst: torch.Tensor, enhancers: int
                    ) -> torch.Tensor:
    """E's per-instance features at full resolution (E at G1's resolution in stage local)."""
    return encoder_features(E, image, inst, enhancers)


def pick_device(name: str, local_rank: int) -> torch.device:
    """The device rule of every engine (resolve_device); under torchrun, "cuda" is the GPU of
    this process's LOCAL_RANK."""
    if name in ("auto", "cuda") and torch.cuda.is_available():
        name = f"cuda:{local_rank}"
    return resolve_device(name)


def pick_precision(name: str, device: torch.device) -> str:
    if name == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if name not in ("fp32", "bf16", "fp16"):
        raise OptionError(f"--precision must be auto, fp32, bf16 or fp16, not {name!r}")
    if name == "fp16" and device.type != "cuda":
        raise OptionError("--precision fp16 needs CUDA (use fp32 or bf16 on the CPU)")
    return name


def save_torch_atomic(obj, path: Path) -> None:
    write_atomic(path, lambda tmp: torch.save(obj, tmp))


# ----------------------------------------------------------------------------- training

def read_state(path: Path) -> dict:
    """trainer_state.pt -> its dict, every part checked for type (the weights are checked
    against the networks when they are loaded); CheckpointError naming the file otherwise."""
    if not path.is_file():
        raise CheckpointError(path, "no trainer state to resume from (was the run started with "
                                    "these --checkpoints-dir and --name?)")
    state = torch_load(path, "trainer state file")
    if not isinstance(state, dict):
        raise CheckpointError(path, f"not a trainer state (holds a {type(state).__name__})")
    for key, kinds in STATE_PARTS.items():
        if key not in state:
            raise CheckpointError(path, f"not a trainer state: no `{key}`"
                                  + (" (this is a model.pt)" if state.get("format") else ""))
        if not isinstance(state[key], kinds) or isinstance(state[key], bool):
            raise CheckpointError(path, f"`{key}` is a {type(state[key]).__name__}")
    if state["phase"] not in ("fix", "all") or state["step"] < 0:
        raise CheckpointError(path, f"bad phase {state['phase']!r} or step {state['step']}")
    for key, ok in (("label_names", lambda v: isinstance(v, str)),
                    ("label_colors", lambda v: isinstance(v, list) and len(v) == 3 and
                     all(isinstance(c, int) and 0 <= c <= 255 for c in v))):
        table = state.get(key)
        if table is not None and not (isinstance(table, dict) and all(
                isinstance(k, int) and not isinstance(k, bool) and ok(v)
                for k, v in table.items())):
            raise CheckpointError(path, f"`{key}` is not a table of label ids")
    return state


# What a trainer state holds (rng_cuda too, on CUDA).
STATE_PARTS = {"options": dict, "config": dict, "step": int, "phase": str,
               "train_seconds": (int, float), "G": dict, "D": dict, "E": (dict, type(None)),
               "opt_G": dict, "opt_D": dict, "scaler_G": dict, "scaler_D": dict,
               "rng_cpu": torch.Tensor}


def resumed_options(opts: TrainOptions, state: dict, path: Path,
                    given: set[str]) -> tuple[TrainOptions, list[str]]:
    """The options of the saved run, with the RUNTIME_OPTIONS taken from `opts`; and the options
    given now that the saved run overrides (`--lr 0.001 (the run uses 0.0002)`)."""
    saved = dict(state["options"])
    unknown = set(saved) - {f.name for f in dataclasses.fields(TrainOptions)}
    if unknown:
        raise CheckpointError(path, f"saved options of another version: {sorted(map(str, unknown))}")
    ignored = [f"{flag(k)} {getattr(opts, k)} (the run uses {saved.get(k)})"
               for k in sorted(given) if k not in RUNTIME_OPTIONS and k != "resume"
               and k in saved and getattr(opts, k) != saved[k]]
    for k in RUNTIME_OPTIONS:
        saved[k] = getattr(opts, k)
    try:
        return TrainOptions(**{**saved, "resume": True}), ignored
    except (OptionError, TypeError) as e:
        raise CheckpointError(path, f"bad saved options: {e}") from None


def given_options(opts: TrainOptions) -> set[str]:
    """The options set to something other than their default (what a Python caller gave)."""
    return {f.name for f in dataclasses.fields(TrainOptions)
            if f.default is not dataclasses.MISSING and getattr(opts, f.name) != f.default}


def restore(state: dict, path: Path, parts: dict) -> None:
    """Load the saved weights, optimizer and scaler states and RNG into this run's objects, or a
    CheckpointError naming the file: a state of another architecture or a damaged one must not
    surface as torch's multi-line load_state_dict error."""
    try:
        for key, obj in parts.items():
            if obj is None:
                continue
            if isinstance(obj, nn.Module):
                check_state(obj, state[key], key)
            obj.load_state_dict(state[key])
            if isinstance(obj, torch.optim.Optimizer):
                _check_moments(obj, key)
        torch.set_rng_state(state["rng_cpu"])
    except CheckpointError as e:
        raise CheckpointError(path, f"does not fit this run: {e}") from None
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CheckpointError(path, f"does not fit this run ({e.__class__.__name__}: {first})") \
            from None


# Ten times the official 2048x1024 model (183 M parameters in G): options within their bounds
# can still multiply up (ngf 4096 with 8 halvings is 10^13 parameters), and building that for
# real would exhaust memory rather than fail.
MAX_PARAMETERS = 2_000_000_000


def check_size_of(cfg: ModelConfig) -> None:
    """OptionError before anything is allocated when G and E together are absurdly large
    (counted on the meta device: shapes only)."""
    with torch.device("meta"):
        n = sum(p.numel() for p in build_generator(cfg).parameters())
        if cfg.feat_num > 0:
            n += sum(p.numel() for p in build_encoder(cfg).parameters())
    if n > MAX_PARAMETERS:
        raise OptionError("--ngf/--n-downsample-global/--n-blocks-global",
                          f"the generator would have {n:,} parameters, more than "
                          f"{MAX_PARAMETERS:,}")


def _check_moments(opt: torch.optim.Optimizer, what: str) -> None:
    """torch checks only the number of parameters per group; Adam's moments of the wrong shape
    would load and then crash at the first step."""
    for group in opt.param_groups:
        for p in group["params"]:
            for name, v in opt.state.get(p, {}).items():
                if isinstance(v, torch.Tensor) and v.dim() and v.shape != p.shape:
                    raise CheckpointError(f"{what}: {name} of shape {tuple(v.shape)} for a "
                                          f"parameter of shape {tuple(p.shape)}")


def build_discriminator(opts: TrainOptions, cfg: ModelConfig) -> MultiscaleDiscriminator:
    """D of this run: it sees the label encoding and an image, never the features."""
    d_input_nc = cfg.label_channels + int(cfg.use_instance) + cfg.output_nc
    return MultiscaleDiscriminator(d_input_nc, opts.ndf, opts.n_layers_d, opts.num_d,
                                   intermediate=not opts.no_ganfeat_loss)


class Training:
    """One stage's networks, optimizers, scalers and counters, with the three things done to
    them: a training step (train_step), a save (model.pt + trainer_state.pt + a sample picture)
    and a restore (resume from trainer_state.pt). train() builds it and runs the loop.

    G trains in two phases (stage local): "fix" (G1 and E frozen, Adam over the enhancers) for
    the first fix_steps steps, then "all" (a new Adam over G and E). D's Adam lives for the run."""

    def __init__(self, opts: TrainOptions, cfg: ModelConfig, G: nn.Module, E: nn.Module | None,
                 D: nn.Module, *, device: torch.device, precision: str, world: int,
                 fix_steps: int, pool: ImagePool | None, vgg_loss: VGGLoss | None):
        self.opts, self.cfg = opts, cfg
        self.G, self.E, self.D = G, E, D
        self.device, self.world = device, world
        self.fix_steps = fix_steps
        self.pool, self.vgg_loss = pool, vgg_loss
        self.frame_size: list[int] | None = None    # [H, W] of the training frames (model.pt)
        self.betas = (opts.beta1, 0.999)
        self.opt_D = torch.optim.Adam(D.parameters(), lr=opts.lr, betas=self.betas)
        self.amp = precision in ("bf16", "fp16")
        self.amp_dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        self.scaler_G = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        self.scaler_D = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        self.step, self.train_seconds = 0, 0.0
        self.phase = self.phase_at(0)
        self.opt_G = self.make_opt_G(self.phase)
        self.G_run = self.E_run = self.D_run = None      # DDP wrappers (or the modules): wrap()

    # ------------------------------------------------------------------ phases

    def phase_at(self, step: int) -> str:
        return "fix" if step < self.fix_steps else "all"

    def make_opt_G(self, phase: str) -> torch.optim.Optimizer:
        G, E = self.G, self.E
        frozen = phase == "fix"
        G.requires_grad_(True)
        if frozen:
            G.model.requires_grad_(False)
        if E is not None:
            E.requires_grad_(not frozen)
        params = enhancer_parameters(G) if frozen else \
            list(G.parameters()) + (list(E.parameters()) if E is not None else [])
        return torch.optim.Adam(params, lr=self.opts.lr, betas=self.betas)

    def wrap(self, module: nn.Module | None) -> nn.Module | None:
        """DDP over the parameters that train now (re-wrapped when the phase changes)."""
        if module is None or self.world == 1 or \
                not any(p.requires_grad for p in module.parameters()):
            return module
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(module, device_ids=ids)

    def enter_phase(self, phase: str) -> None:
        """The frozen phase has ended: a new Adam over all of G (and E), DDP re-wrapped."""
        self.phase = phase
        self.opt_G = self.make_opt_G(phase)
        self.G_run, self.E_run = self.wrap(self.G), self.wrap(self.E)

    def set_lr(self, lr: float) -> None:
        for opt in (self.opt_G, self.opt_D):
            for group in opt.param_groups:
                group["lr"] = lr

    # ------------------------------------------------------------------ restore and save

    def restore(self, state: dict, path: Path) -> None:
        """Continue the run saved in `state` (read_state of `path`): counters, phase, weights,
        optimizer and scaler states, RNG."""
        if (self.E is None) != (state["E"] is None):
            raise CheckpointError(path, "does not fit this run: the encoder E is "
                                  + ("missing" if state["E"] is None else "unexpected"))
        self.step, self.train_seconds, self.phase = state["step"], state["train_seconds"], \
            state["phase"]
        self.opt_G = self.make_opt_G(self.phase)
        restore(state, path, {"G": self.G, "D": self.D, "E": self.E, "opt_G": self.opt_G,
                              "opt_D": self.opt_D, "scaler_G": self.scaler_G,
                              "scaler_D": self.scaler_D})
        if self.device.type == "cuda" and state.get("rng_cuda") is not None:
            torch.cuda.set_rng_state(state["rng_cuda"], self.device)

    def trainer_state(self, label_names, label_colors) -> dict:
        """Everything --resume needs (STATE_PARTS)."""
        G, E, D, device = self.G, self.E, self.D, self.device
        return {
            "label_names": label_names, "label_colors": label_colors,
            "options": dataclasses.asdict(self.opts), "config": self.cfg.to_dict(),
            "step": self.step, "phase": self.phase, "train_seconds": self.train_seconds,
            "G": G.state_dict(), "D": D.state_dict(), "E": E.state_dict() if E is not None else None,
            "opt_G": self.opt_G.state_dict(), "opt_D": self.opt_D.state_dict(),
            "scaler_G": self.scaler_G.state_dict(), "scaler_D": self.scaler_D.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        }

    def save(self, run_dir: Path, steps_per_epoch: int, label_names, label_colors,
             last_batch) -> Path:
        """model.pt, trainer_state.pt and (with a last batch) samples/step_NNNNNNN.png."""
        opts = self.opts
        model_path = run_dir / "model.pt"
        # How the photos were loaded: the feature dictionary must load them the same way.
        info = {"stage": opts.stage, "step": self.step, "epoch": self.step / steps_per_epoch,
                "train_seconds": round(self.train_seconds, 1),
                "resize_or_crop": opts.resize_or_crop, "load_size": opts.load_size,
                "fine_size": opts.fine_size, "dataset_mode": opts.dataset_mode}
        if self.frame_size:          # `export`'s default engine size
            info["frame_size"] = self.frame_size
        extra = {"train_info": info}
        if label_colors:
            extra["label_colors"] = label_colors
        E = self.E
        save_checkpoint(Checkpoint(
            self.cfg, self.G.state_dict(), E.state_dict() if E is not None else None, None,
            label_names, extra), model_path)
        save_torch_atomic(self.trainer_state(label_names, label_colors), run_dir / STATE_FILE)
        if last_batch is not None:
            label, fake, real = last_batch
            write_image(run_dir / "samples" / f"step_{self.step:07d}.png",
                        sample_grid(label, fake, real, colors=label_colors))
        return model_path

    # ------------------------------------------------------------------ the step

    def train_step(self, label, inst, real) -> tuple[dict[str, float], torch.Tensor]:
        """One G and D update on a batch; the batch's losses (averaged over processes) and
        fakes. FloatingPointError for a non-finite loss."""
        opts, cfg, device = self.opts, self.cfg, self.device
        D, E = self.D, self.E
        B = label.shape[0]
        with torch.autocast(device.type, dtype=self.amp_dtype, enabled=self.amp):
            x = encode_labels(label, inst, cfg.label_nc, cfg.use_instance)
            g_in = x
            if E is not None:
                with torch.set_grad_enabled(self.phase == "all"):
                    feat = encode_features(self.E_run, real, inst, cfg.enhancers)
                g_in = torch.cat([x, feat.to(x.dtype)], 1)
            fake = self.G_run(g_in)
            # D's fake pass: this batch's fakes, or with --pool-size some earlier ones (with
            # the labels they were made from).
            x_fake, fake_d = x, fake.detach()
            if self.pool is not None:
                label_p, inst_p, fake_d = self.pool.query((label, inst, fake_d), self.step)
                x_fake = encode_labels(label_p, inst_p, cfg.label_nc, cfg.use_instance)
            # D on fake and real in one batch (InstanceNorm is per sample, so batching them
            # changes nothing); its gradients are applied after G has used the same D.
            preds = self.D_run(torch.cat([torch.cat([x_fake, fake_d.to(x.dtype)], 1),
                                          torch.cat([x, real.to(x.dtype)], 1)], 0))
            lsgan = not opts.no_lsgan
            loss_D_fake = gan_loss([[t[:B] for t in s] for s in preds], False, lsgan)
            loss_D_real = gan_loss([[t[B:] for t in s] for s in preds], True, lsgan)
            pred_real = [[t[B:].detach() for t in s] for s in preds]     # feature-matching targets
            loss_D = 0.5 * (loss_D_fake + loss_D_real)
        self.opt_D.zero_grad(set_to_none=True)
        self.scaler_D.scale(loss_D).backward()

        D.requires_grad_(False)          # G's pass must not touch D's gradients
        with torch.autocast(device.type, dtype=self.amp_dtype, enabled=self.amp):
            pred_fake = D(torch.cat([x, fake.to(x.dtype)], 1))
            loss_G_GAN = gan_loss(pred_fake, True, lsgan)
            loss_G_FM = torch.zeros((), device=device) if opts.no_ganfeat_loss else \
                feature_matching_loss(pred_fake, pred_real, opts.n_layers_d, opts.lambda_feat)
            loss_G_VGG = self.vgg_loss(fake, real) if self.vgg_loss is not None else \
                torch.zeros((), device=device)
            loss_G = loss_G_GAN + loss_G_FM + loss_G_VGG
        self.opt_G.zero_grad(set_to_none=True)
        self.scaler_G.scale(loss_G).backward()
        D.requires_grad_(True)
        self.scaler_G.step(self.opt_G)
        self.scaler_G.update()
        self.scaler_D.step(self.opt_D)
        self.scaler_D.update()
        losses = torch.stack([loss_G_GAN.detach().float(), loss_G_FM.detach().float(),
                              loss_G_VGG.detach().float(), loss_D_real.detach().float(),
                              loss_D_fake.detach().float()])
        if self.world > 1:
            torch.distributed.all_reduce(losses)
            losses /= self.world
        vals = dict(zip(LOSS_NAMES, losses.tolist()))
        for k, v in vals.items():
            if not math.isfinite(v):
                raise FloatingPointError(f"step {self.step}: loss {k} is {v}")
        return vals, fake.detach()


def train(opts: TrainOptions, given: set[str] | None = None) -> Path:
    """Run (or resume) one stage. Returns the path of the written model.pt.

    `given`: the options set explicitly (the command line's); a resumed run warns about those
    its saved state overrides. None: those that differ from their defaults."""
    run_dir = Path(opts.checkpoints_dir) / opts.name
    # Every output goes into run_dir: refuse an unwritable one now, not after the first epoch.
    check_writable(run_dir / "model.pt")
    main_process = int(os.environ.get("RANK", "0")) == 0
    state = None
    if opts.resume:
        state_path = run_dir / STATE_FILE
        state = read_state(state_path)
        opts, ignored = resumed_options(opts, state, state_path,
                                        given_options(opts) if given is None else set(given))
        if ignored and main_process:
            print(f"warning: --resume continues {state_path} with its saved options; ignored: "
                  + ", ".join(ignored), file=sys.stderr, flush=True)
    if main_process:
        # Temporary files of a killed write (files.write_atomic names them) would otherwise
        # pile up in the run folder across restarts.
        remove_stale_temps(run_dir)

    # Distributed: torchrun sets WORLD_SIZE/RANK/LOCAL_RANK.
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(opts.device, local_rank)
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    precision = pick_precision(opts.precision, device)
    main_process = rank == 0

    if state is not None:        # the architecture of the run being resumed, G1 included
        try:
            cfg, g1_ckpt = ModelConfig.from_dict(state["config"]), None
        except (TypeError, ValueError) as e:
            raise CheckpointError(run_dir / STATE_FILE, f"bad architecture config: {e}") from None
    else:
        try:
            cfg, g1_ckpt = resolve_config(opts)
        except ValueError as e:
            if isinstance(e, Error):
                raise
            raise OptionError(f"the architecture options give no valid model: {e}") from None
    check_size_of(cfg)
    if not opts.no_vgg:
        loss_module.find_vgg_weights(opts.vgg_weights)   # missing: fail before the data check
    label_names, label_colors = run_label_names(opts, cfg, state, g1_ckpt)
    d_state = None
    if opts.load_d and state is None:       # checked on the meta device before the data check
        from p2phd_infer.official import read_state_dict
        d_state = read_state_dict(opts.load_d)
        with torch.device("meta"):
            fit_discriminator(build_discriminator(opts, cfg), d_state, opts.load_d)

    # Data, every file decoded and checked before step 1. H and W must divide G's stride, and
    # E's stride at E's resolution.
    multiple = max(cfg.stride, 2 ** cfg.n_downsample_E * 2 ** cfg.enhancers if cfg.feat_num
                   else 1)
    dataset = PairedDataset(opts.dataroot, opts.dataset_mode, opts.phase, cfg.needs_instance_map,
                            opts.resize_or_crop, opts.load_size, multiple, not opts.no_flip,
                            opts.seed, cfg.label_nc, opts.fine_size)
    dataset.check_files(max(cfg.min_size, cfg.encoder_min_size if cfg.feat_num else 1),
                        workers=max(1, opts.num_workers),
                        progress=main_process and opts.progress)

    sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=world, rank=rank,
                                                  shuffle=True, seed=opts.seed, drop_last=True)
    steps_per_epoch = len(sampler) // opts.batch_size
    if steps_per_epoch == 0:
        raise OptionError("--batch-size", f"{opts.dataroot}: {len(dataset)} samples, fewer than "
                                          f"batch size {opts.batch_size} x {world} processes")

    # Networks. Same seed on every rank, and DDP broadcasts rank 0's weights anyway.
    torch.manual_seed(opts.seed)
    G = init_weights(build_generator(cfg)).to(device)
    E = init_weights(build_encoder(cfg)).to(device) if cfg.feat_num > 0 else None
    D = init_weights(build_discriminator(opts, cfg)).to(device)
    if g1_ckpt is not None and state is None:
        load_g1(G, g1_ckpt.generator, opts.load_global)
        if E is not None:
            E.load_state_dict(g1_ckpt.encoder)
    if d_state is not None:
        load_discriminator(D, d_state, opts.load_d)
    pool = ImagePool(opts.pool_size, opts.seed, rank) if opts.pool_size > 0 else None
    if pool is not None and state is not None and main_process:
        print(f"warning: --resume starts the --pool-size {opts.pool_size} image pool empty "
              "(it is not saved)", file=sys.stderr, flush=True)
    vgg_loss = None
    if not opts.no_vgg:
        vgg_loss = VGGLoss(VGG19Features(opts.vgg_weights),
                           opts.lambda_feat).to(device)

    total_steps = (opts.niter + opts.niter_decay) * steps_per_epoch
    end_step = min(total_steps, opts.max_steps) if opts.max_steps else total_steps
    fix_steps = opts.niter_fix_global * steps_per_epoch if opts.stage == "local" else 0
    run = Training(opts, cfg, G, E, D, device=device, precision=precision, world=world,
                   fix_steps=fix_steps, pool=pool, vgg_loss=vgg_loss)
    if state is not None:
        run.restore(state, run_dir / STATE_FILE)
    run.G_run, run.E_run, run.D_run = run.wrap(G), run.wrap(E), run.wrap(D)

    # Outputs (rank 0 only).
    log_path = run_dir / "loss_log.csv"
    if main_process:
        (run_dir / "samples").mkdir(parents=True, exist_ok=True)
        _trim_log(log_path, run.step)
        n_g = sum(p.numel() for p in G.parameters())
        n_e = sum(p.numel() for p in E.parameters()) if E is not None else 0
        H, W = dataset[0]["label"].shape[-2:]
        run.frame_size = [int(H), int(W)]
        print(f"stage {opts.stage}: {cfg.netG} G {n_g:,} params"
              + (f", E {n_e:,}" if E is not None else "")
              + f", D {sum(p.numel() for p in D.parameters()):,}; {len(dataset)} samples at "
              f"{W}x{H}, {steps_per_epoch} steps/epoch, steps {run.step}->{end_step} of "
              f"{total_steps}; {device} {precision}, {world} process(es)", flush=True)

    bar = None
    if main_process and opts.progress:
        from tqdm import tqdm
        bar = tqdm(total=end_step, initial=run.step, desc=f"{opts.name} {opts.stage}",
                   unit="step", dynamic_ncols=True)
    model_path = run_dir / "model.pt"
    last_batch = None
    while run.step < end_step:
        epoch, skip = divmod(run.step, steps_per_epoch)
        sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        # The epoch's order is a pure function of (seed, epoch): a resumed run skips what it did.
        order = list(sampler)[skip * opts.batch_size:]
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=opts.batch_size, sampler=order, drop_last=True,
            num_workers=opts.num_workers, pin_memory=device.type == "cuda",
            persistent_workers=False)
        for batch in loader:
            if run.phase_at(run.step) != run.phase:
                run.enter_phase(run.phase_at(run.step))
                if main_process:
                    print(f"\nstep {run.step}: G1 unfrozen; new Adam over all G"
                          + (" and E" if E is not None else "") + " parameters", flush=True)
            lr = lr_at(opts, run.step, steps_per_epoch)
            run.set_lr(lr)
            t0 = time.perf_counter()
            label = batch["label"].to(device, non_blocking=True)
            inst = batch["inst"].to(device, non_blocking=True)
            real = batch["image"].to(device, non_blocking=True)
            losses, fake = run.train_step(label, inst, real)
            run.step += 1
            dt = time.perf_counter() - t0
            run.train_seconds += dt
            step = run.step
            if main_process:
                _append_log(log_path, {"step": step, "epoch": f"{step / steps_per_epoch:.4f}",
                                       "phase": run.phase, "lr": f"{lr:.6g}",
                                       **{k: f"{v:.5f}" for k, v in losses.items()},
                                       "sec": f"{dt:.3f}"})
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(G=f"{losses['G_GAN']:.3f}", FM=f"{losses['G_GAN_Feat']:.3f}",
                                    VGG=f"{losses['G_VGG']:.3f}", Dr=f"{losses['D_real']:.3f}",
                                    Df=f"{losses['D_fake']:.3f}", lr=f"{lr:.2e}")
                last_batch = (label.cpu(), fake.float().cpu(), real.cpu())
                if step % opts.save_every == 0 or step == end_step:
                    model_path = run.save(run_dir, steps_per_epoch, label_names,
                                          label_colors, last_batch)
            if run.step >= end_step:
                break
    if bar is not None:
        bar.close()
    if main_process and not (run_dir / "model.pt").is_file():
        model_path = run.save(run_dir, steps_per_epoch, label_names, label_colors, last_batch)
    if world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return model_path


def _append_log(path: Path, row: dict) -> None:
    new = not path.is_file()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(row))
        if new:
            w.writeheader()
        w.writerow(row)


def _trim_log(path: Path, step: int) -> None:
    """A resumed run continues from its last save: drop log rows written after it."""
    if not path.is_file():
        return
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or all(int(r["step"]) <= step for r in rows):
        return
    keep = [r for r in rows if int(r["step"]) <= step]
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(keep)

    write_atomic(path, write)
