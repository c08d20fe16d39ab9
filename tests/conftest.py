import atexit
import os
import shutil
import tempfile

import torch

# Triton's CPU interpreter is chosen when triton is first imported, so it must be on before any
# test module imports p2phd_infer (whose kernels import triton). With CUDA the kernels run compiled.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Engines cache conversions under the user's cache folder (the OpenVINO engine converts a
# model.pt once per frame size): tests get a folder of their own, removed at the end, so a run of
# the suite neither reads a stale entry nor leaves files in ~/.cache.
_CACHE = tempfile.mkdtemp(prefix="p2phd-test-cache-")
os.environ["XDG_CACHE_HOME"] = _CACHE
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
