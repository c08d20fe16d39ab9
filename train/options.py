"""TrainOptions: every option of `p2phd-infer train`, declared once (help, bounds, choices,
defaults). The command line is generated from it (p2phd_infer/cli/options.py); it is checked
whole when built, also for callers of the Python API and for options read back from a
trainer_state.pt, so a bad value is refused by its option name, never met as a crash at step 1
or mid-run."""
from __future__ import annotations

import os
from dataclasses import dataclass, fields

from p2phd_infer.config import BOUNDS, MAX_ENHANCERS, MAX_FEAT_NUM, MAX_FILTERS
from p2phd_infer.errors import OptionError
from p2phd_infer.limits import MAX_BATCH, MAX_POOL_SIZE, MAX_THREADS
from p2phd_infer.options import check, flag_of, setting

from .datasets import RESIZE_MODES

DATASET_MODES = ("pix2pixhd", "cityscapes")
STAGES = ("global", "local")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
MAX_EPOCHS = 10**6
MAX_STEPS = 10**12
MAX_SIDE = 65536


@dataclass
class TrainOptions:
    dataroot: str = setting(help="Dataset folder.", path="any", required=True)
    dataset_mode: str = setting("pix2pixhd", "Folder layout of --dataroot.",
                                choices=DATASET_MODES)
    phase: str = setting("train", "pix2pixhd: folder prefix (train_label...); cityscapes: split.")
    name: str = setting("p2phd", "Run name (folder under --checkpoints-dir).")
    checkpoints_dir: str = setting("checkpoints", "Folder of the runs (each in NAME/).",
                                   path="any")
    stage: str = setting("global", "global: G1 at low resolution; local: the local enhancer on "
                                   "a loaded G1.", choices=STAGES)
    load_global: str | None = setting(None, "Stage local: the global stage's model.pt.",
                                      path="file")
    # Architecture. None: the official default (stage global) or the loaded G1's value (local).
    label_nc: int | None = setting(
        None, "Label classes. 0: the input is an RGB image (folders PHASE_A/ inputs, PHASE_B/ "
              "photos, as the official code).", bounds=BOUNDS["label_nc"],
        shown_default="35; local: from the loaded G1")
    label_names: str | None = setting(
        None, "Label names (and colours) for model.pt: JSON {\"26\": \"car\"} or {\"26\": "
              "{\"name\": \"car\", \"color\": [0, 0, 142]}}, or text lines `26 car 0 0 142`.",
        path="file", shown_default="Cityscapes names for label_nc 35; local: G1's")
    no_instance: bool = setting(False, "No instance edge map input.")
    instance_feat: bool = setting(False, "Train the encoder E for per-instance features.")
    feat_num: int | None = setting(None, "Encoder feature channels.", bounds=(1, MAX_FEAT_NUM),
                                   shown_default="3")
    ngf: int | None = setting(None, "Generator filters: G1's (global), the enhancer's (local).",
                              bounds=BOUNDS["ngf"],
                              shown_default="64; local: G1's / 2**n_local_enhancers")
    n_downsample_global: int | None = setting(None, "G1 downsamplings.",
                                              bounds=BOUNDS["n_downsample_global"],
                                              shown_default="4")
    n_blocks_global: int | None = setting(None, "G1 residual blocks.",
                                          bounds=BOUNDS["n_blocks_global"], shown_default="9")
    n_local_enhancers: int = setting(1, "Stage local: local enhancers (each doubles the "
                                        "resolution).", bounds=(1, MAX_ENHANCERS))
    n_blocks_local: int = setting(3, "Residual blocks of each local enhancer.",
                                  bounds=BOUNDS["n_blocks_local"])
    nef: int | None = setting(None, "Encoder filters.", bounds=BOUNDS["nef"], shown_default="16")
    n_downsample_E: int | None = setting(None, "Encoder downsamplings.",
                                         bounds=BOUNDS["n_downsample_E"], shown_default="4")
    ndf: int = setting(64, "Discriminator filters.", bounds=(1, MAX_FILTERS))
    n_layers_d: int = setting(3, "Discriminator layers.", bounds=(1, 8))
    num_d: int = setting(2, "Discriminator scales.", bounds=(1, 8))
    load_d: str | None = setting(
        None, "Start D from an official latest_net_D.pth (fine-tuning); its shapes must fit "
              "--ndf/--n-layers-d/--num-d and the D inputs.", path="file")
    no_ganfeat_loss: bool = setting(
        False, "No discriminator feature-matching loss (D returns only its scores).",
        also=("--no-ganFeat-loss",))
    no_lsgan: bool = setting(False, "Vanilla GAN loss (binary cross-entropy on D's scores) "
                                    "instead of least squares.")
    pool_size: int = setting(0, "Image pool of earlier fakes shown to D (0: off, the official "
                                "default).", bounds=(0, MAX_POOL_SIZE))
    # Schedule (epochs).
    niter: int = setting(100, "Epochs at the initial learning rate.", bounds=(0, MAX_EPOCHS))
    niter_decay: int = setting(100, "Epochs of linear decay to 0.", bounds=(0, MAX_EPOCHS))
    niter_fix_global: int = setting(0, "Stage local: epochs training the enhancer alone with "
                                       "G1 frozen.", bounds=(0, MAX_EPOCHS))
    lr: float = setting(2e-4, "Adam's initial learning rate (G and D).", bounds=(0, 1),
                        open="lo")
    beta1: float = setting(0.5, "Adam's beta1.", bounds=(0, 1), open="hi")
    batch_size: int = setting(1, "Per process.", bounds=(1, MAX_BATCH))
    # Data.
    resize_or_crop: str = setting(
        "scale_width", "scale_width: width to --load-size; the crop modes then (or without a "
                       "resize) take a random --fine-size square, the same for label, instances "
                       "and photo.", choices=RESIZE_MODES)
    load_size: int = setting(1024, "Width for scale_width and scale_width_and_crop.",
                             bounds=(1, MAX_SIDE))
    fine_size: int = setting(512, "Crop modes: side of the random square crop (a multiple of "
                                  "G's stride; a shorter image side is kept whole).",
                             bounds=(1, MAX_SIDE))
    no_flip: bool = setting(False, "No random horizontal flips.")
    num_workers: int = setting(2, "DataLoader workers (and threads of the dataset check).",
                               bounds=(0, MAX_THREADS))
    # Losses.
    lambda_feat: float = setting(10.0, "Weight of feature matching and VGG losses.",
                                 bounds=(0, 1e6))
    no_vgg: bool = setting(False, "Train without the VGG19 perceptual loss.")
    vgg_weights: str | None = setting(
        None, "torchvision's vgg19-dcbb9e9d.pth; never downloaded.", path="file",
        shown_default="the torch hub cache")
    # Run.
    max_steps: int | None = setting(None, "Stop after this many steps (the schedule is "
                                          "unchanged).", bounds=(1, MAX_STEPS))
    save_every: int = setting(1000, "Checkpoint every N steps.", bounds=(1, MAX_STEPS))
    resume: bool = setting(
        False, "Continue the run in --checkpoints-dir/--name exactly, with its saved options "
               "(all but --max-steps, --save-every, --device, --num-workers, --dataroot and "
               "--no-progress).")
    seed: int = setting(0, "Seed of the weights' initialisation, the data order and the "
                           "augmentation.", bounds=(0, 2**63 - 1))
    device: str = setting("auto", "auto, cpu, cuda or cuda:N.")
    precision: str = setting("auto", "auto: bf16 autocast on CUDA, fp32 on the CPU.",
                             choices=PRECISIONS)
    progress: bool = setting(True, "No progress bar.", flag="--no-progress")

    def __post_init__(self):
        if not isinstance(self.dataroot, (str, os.PathLike)) or not str(self.dataroot):
            raise OptionError("--dataroot", "a dataset folder is required")
        check(self)
        if self.niter + self.niter_decay < 1:
            raise OptionError("--niter/--niter-decay", "0 epochs in all: nothing to train")


def flag(name: str) -> str:
    """The command-line option of a TrainOptions field: n_downsample_E -> --n-downsample-e."""
    return flag_of(next(f for f in fields(TrainOptions) if f.name == name))


@dataclass
class FeaturesOptions:
    """Every option of `p2phd-infer features`."""
    engine: str = setting(help="model.pt with an encoder; the dictionary is stored back into "
                               "it.", path="file", required=True, renamed_from=("--model",))
    data: str = setting(help="Training data (pix2pixHD layout: train_label/ train_inst/ "
                             "train_img/).", path="dir", required=True)
    clusters: int = setting(10, "k-means centres per label (at most the number of kept "
                                "instances).", bounds=(1, MAX_BATCH))
    export_official: str | None = setting(
        None, "Also write the official features_clustered_010.npy format here.", path="file")
    device: str = setting("auto", "cpu, cuda, cuda:N or auto.")
    dataset_mode: str = setting("pix2pixhd", "Folder layout of --data.", choices=DATASET_MODES)
    phase: str = setting("train", "Dataset split: <phase>_label/ etc., or the Cityscapes split.")
    resize_or_crop: str | None = setting(
        None, "Load photos as the model was trained: 'scale_width' resizes to --load-size. The "
              "crop modes take whole photos (scale_width_and_crop as scale_width, crop as "
              "none): a random crop would cut instances.", choices=RESIZE_MODES,
        shown_default="as recorded in the model, else scale_width")
    load_size: int | None = setting(
        None, "Width photos are scaled to with scale_width.", bounds=(32, MAX_SIDE),
        shown_default="as recorded in the model, else 1024")
    workers: int = setting(2, "Photo decoding threads.", bounds=(0, MAX_THREADS))
    label_names: str | None = setting(
        None, "Also store label names (and colours) in the model: JSON {\"26\": \"car\"} or "
              "{\"26\": {\"name\": \"car\", \"color\": [0, 0, 142]}}, or text lines "
              "`26 car 0 0 142`; `run --style car=3` then finds them.", path="file")

    def __post_init__(self):
        check(self)
