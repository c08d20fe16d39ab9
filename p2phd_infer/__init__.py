"""p2phd-infer: pix2pixHD training, export and fast 2048x1024 synthesis."""
from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .config import ModelConfig

__version__ = "0.1.0"
__all__ = ["Checkpoint", "ModelConfig", "load_checkpoint", "save_checkpoint"]
