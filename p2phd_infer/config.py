"""Architecture of a pix2pixHD model: the numbers that, with a state dict, rebuild it exactly."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields


# Sane maxima: far above any published pix2pixHD model (ngf 64, nef 16, 4 + 1 halvings, 9 blocks,
# Cityscapes' 35 labels), far below what would make building the network allocate absurd memory.
MAX_FILTERS = 4096
MAX_LABEL_NC = 65536          # the ids a 16-bit label PNG can hold
MAX_FEAT_NUM = 1024
MAX_DOWNSAMPLE = 8            # halvings of G1 (and G1 + enhancers together), or of E
MAX_BLOCKS = 64
MAX_ENHANCERS = 4
# What a frame's label input is: "ids", a label map of class ids 0..label_nc-1; or "rgb", the
# input image itself (label_nc 0, the official RGB-input mode).
INPUT_KINDS = ("ids", "rgb")
BOUNDS = {                    # field: (min, max)
    "label_nc": (0, MAX_LABEL_NC), "feat_num": (0, MAX_FEAT_NUM), "ngf": (1, MAX_FILTERS),
    "n_downsample_global": (0, MAX_DOWNSAMPLE), "n_blocks_global": (0, MAX_BLOCKS),
    "n_local_enhancers": (0, MAX_ENHANCERS), "n_blocks_local": (0, MAX_BLOCKS),
    "nef": (1, MAX_FILTERS), "n_downsample_E": (0, MAX_DOWNSAMPLE), "output_nc": (1, 4),
}


@dataclass(frozen=True)
class ModelConfig:
    label_nc: int = 35                 # 0: the input is an RGB image, not label ids (official)
    use_instance: bool = True          # instance edge map as one input channel
    feat_num: int = 0                  # encoder feature channels fed to G (0: no features)
    netG: str = "local"                # "global" (G1 alone) or "local" (G1 + local enhancers)
    ngf: int = 32                      # filters of the outermost stage (G1 uses ngf * 2**n_local_enhancers)
    n_downsample_global: int = 4
    n_blocks_global: int = 9
    n_local_enhancers: int = 1
    n_blocks_local: int = 3
    nef: int = 16                      # encoder filters
    n_downsample_E: int = 4
    output_nc: int = 3

    def __post_init__(self):
        # A config comes from files (model.pt, engine metadata) as often as from options: every
        # field is checked here, so an absurd one is refused by name before anything is built or
        # allocated from it.
        if self.netG not in ("global", "local"):
            raise ValueError(f"netG must be 'global' or 'local', not {self.netG!r}")
        if not isinstance(self.use_instance, bool):
            raise ValueError(f"use_instance must be true or false, not {self.use_instance!r}")
        for name, (lo, hi) in BOUNDS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer, not {value!r}")
            if not lo <= value <= hi:
                raise ValueError(f"{name} {value} is out of range ({lo}..{hi})")
        if self.netG == "local" and self.n_local_enhancers < 1:
            raise ValueError("n_local_enhancers must be at least 1 for a local generator")
        if self.n_downsample_global + self.enhancers > MAX_DOWNSAMPLE:
            raise ValueError(f"n_downsample_global {self.n_downsample_global} + "
                             f"{self.enhancers} local enhancers is more than {MAX_DOWNSAMPLE} "
                             f"halvings in all")

    @property
    def input_kind(self) -> str:
        """"ids" or "rgb" (INPUT_KINDS): the one place label_nc 0 is read as "RGB input"."""
        return "rgb" if self.label_nc == 0 else "ids"

    @property
    def label_channels(self) -> int:
        """Channels the label takes in G's input: its one-hot, or the 3 of an RGB input image
        (label_nc 0, the official RGB-input mode)."""
        return self.label_nc if self.label_nc > 0 else 3

    @property
    def input_nc(self) -> int:
        """Generator input channels: one-hot (or the RGB input), then the edge map, then features
        (official order)."""
        return self.label_channels + int(self.use_instance) + self.feat_num

    @property
    def enhancers(self) -> int:
        return self.n_local_enhancers if self.netG == "local" else 0

    @property
    def stride(self) -> int:
        """H and W must be multiples of this for the skip sums to line up."""
        return 2 ** (self.n_downsample_global + self.enhancers)

    def padded_size(self, height: int, width: int) -> tuple[int, int]:
        """The size a frame is synthesized at: each side rounded up to a multiple of the
        stride (engines reflect-pad to it and crop the image back)."""
        s = self.stride
        return -(-height // s) * s, -(-width // s) * s

    @property
    def min_size(self) -> int:
        """The smallest height and width the generator takes: at the bottom of G1 each side must
        be at least 2 pixels (the residual blocks' reflection padding of 1), and at G1's input at
        least 4 (its reflection padding of 3). A multiple of the stride."""
        return max(2 * self.stride, 4 * 2 ** self.enhancers)

    @property
    def encoder_min_size(self) -> int:
        """The smallest photo side the encoder takes (it runs at G1's resolution): its bottom,
        n_downsample_E halvings down, must keep 2 pixels for instance norm statistics."""
        return 2 * 2 ** (self.n_downsample_E + self.enhancers)

    @property
    def needs_instance_map(self) -> bool:
        return self.use_instance or self.feat_num > 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        if not isinstance(d, dict):
            raise ValueError(f"expected a dict of architecture fields, got {type(d).__name__}")
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown architecture fields: {sorted(map(str, unknown))}")
        return cls(**d)
