"""`p2phd-infer serve`: an HTTP inference server over the Runtime that speaks KServe v2 / Triton
(app.py, kserve.py), with Prometheus metrics (metrics.py). Needs the `starlette`, `uvicorn`,
`prometheus-client` and `python-multipart` packages (installed with p2phd-infer)."""
from __future__ import annotations


def create_app(*args, **kwargs):
    """See app.create_app (imported on use: the server's packages load only when serving)."""
    from .app import create_app as make
    return make(*args, **kwargs)


__all__ = ["create_app"]
