import atexit
import os
import shutil
import tempfile

import pytest
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


@pytest.fixture(scope="module")
def one_thread():
    """Tiny networks gain nothing from a second thread, and on a busy 2-core box OpenMP's waiting
    threads make every small op slow (measured 13x slower); restored afterwards. Modules opt in
    with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
