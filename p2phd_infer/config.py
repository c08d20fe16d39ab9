"""Architecture of a pix2pixHD model: the numbers that, with a state dict, rebuild it exactly."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields


@dataclass(frozen=True)
class ModelConfig:
    label_nc: int = 35
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
        if self.netG not in ("global", "local"):
            raise ValueError(f"netG must be 'global' or 'local', not {self.netG!r}")
        if self.label_nc < 1 or self.feat_num < 0:
            raise ValueError(f"bad config: label_nc={self.label_nc}, feat_num={self.feat_num}")

    @property
    def input_nc(self) -> int:
        """Generator input channels: one-hot, then the edge map, then features (official order)."""
        return self.label_nc + int(self.use_instance) + self.feat_num

    @property
    def enhancers(self) -> int:
        return self.n_local_enhancers if self.netG == "local" else 0

    @property
    def stride(self) -> int:
        """H and W must be multiples of this for the skip sums to line up."""
        return 2 ** (self.n_downsample_global + self.enhancers)

    @property
    def min_size(self) -> int:
        """The smallest height and width the network takes: at the bottom of G1 each side must
        be at least 2 pixels for the residual blocks' reflection padding."""
        return 2 * self.stride

    @property
    def needs_instance_map(self) -> bool:
        return self.use_instance or self.feat_num > 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown architecture fields: {sorted(unknown)}")
        return cls(**d)
