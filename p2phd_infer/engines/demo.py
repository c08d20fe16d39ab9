"""Where the bundled demo lives: the model (trained on synthetic street scenes) and its sample
label and instance maps (the default calibration set of --precision int8)."""
from __future__ import annotations

from pathlib import Path

# Beside the package, not importlib.resources: under an editable install with mapped package
# folders, resources.files() gives a MultiplexedPath that does not convert to a real path.
DEMO = Path(__file__).resolve().parent.parent / "assets" / "demo"


def default_engine_path() -> Path:
    """The demo model shipped in the package."""
    return DEMO / "model.pt"


def demo_labels() -> Path:
    """The bundled sample label maps (their instance maps are in the sibling instances/)."""
    return DEMO / "labels"
