import os

import torch

# Triton's CPU interpreter is chosen when triton is first imported, so it must be on before any
# test module imports p2phd_infer (whose kernels import triton). With CUDA the kernels run compiled.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
