"""The limits every option and API argument is checked against, each defined here once.

The run options (plan.py), the server's (serve/options.py), the Runtime and the command line all
import these; nothing here imports anything, so any layer may.
"""
from __future__ import annotations

# Frames per engine call. Far above any batch that fits a GPU at 2048x1024; a bound at all so a
# typo (--batch-size 10000000) is refused instead of sizing buffers by it.
MAX_BATCH = 4096
# A minute: a longer batching delay would only hide a mistake (and overflow timed waits).
MAX_DELAY_US = 60_000_000
# The largest --max-pixels: 2**34 pixels is a 131072x131072 frame, far past any one-hot that fits.
MAX_PIXELS_LIMIT = 2**34
# The default --max-pixels: twice Cityscapes' 2048x1024 squared up, so an 8 K frame still fits.
DEFAULT_MAX_PIXELS = 2048 * 2048 * 2
# Decode and encode threads of one Runtime.
MAX_THREADS = 256
# Frames admitted at once (the Runtime's queue, the server's admission).
MAX_QUEUE = 1 << 20
# Ray synthesis actors (one engine each).
MAX_RAY_WORKERS = 100_000
# GPUs one Ray actor may ask for.
MAX_GPUS_PER_WORKER = 1024
# JPEG quality, Pillow's scale.
JPEG_QUALITY = (1, 100)
# Earlier fakes the trainer's image pool keeps for D (--pool-size; the official code uses 50).
MAX_POOL_SIZE = 4096
# Frames per second of an --format mp4 video: (0, MAX_FPS].
MAX_FPS = 1000.0
# KID's random subsets (evaluate --kid-subsets; the KID paper and torch-fidelity use 100).
MAX_KID_SUBSETS = 10_000
# Styles per label map for evaluate's LPIPS diversity: every pair is scored, N*(N-1)/2 of them.
MAX_STYLES = 64
