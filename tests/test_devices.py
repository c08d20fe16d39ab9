"""devices.py: the one device rule (parse_device for the syntax, resolve_device for this
process), and the modules that used to keep their own copy of it."""
from __future__ import annotations

import pytest
import torch

from p2phd_infer.devices import parse_device, resolve_device
from p2phd_infer.errors import MissingDependency, OptionError


def test_parse_device_takes_the_syntax_only():
    assert parse_device(None) is None and parse_device("auto") is None
    assert parse_device(" auto ") is None
    assert parse_device("cpu") == torch.device("cpu")
    # No GPU needed to name one (the Ray driver may have none).
    assert parse_device("cuda:3") == torch.device("cuda", 3)
    assert parse_device(torch.device("cpu")) == torch.device("cpu")
    for bad, why in (("", "empty"), ("  ", "empty"), ("gpu", "not a device"),
                     ("cuda:x", "not a device"), ("mps", "cpu or cuda"), ("meta", "cpu or cuda")):
        with pytest.raises(OptionError, match=why) as e:
            parse_device(bad)
        assert e.value.path == "--device"


def test_resolve_device():
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device(None).type == want and resolve_device("auto").type == want
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(OptionError):
        resolve_device("mps")
    if torch.cuda.is_available():
        assert resolve_device("cuda").index is not None
        with pytest.raises(OptionError, match="CUDA devices"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")
    else:
        with pytest.raises(MissingDependency, match="no CUDA device"):
            resolve_device("cuda")


def test_every_layer_uses_the_one_rule():
    from p2phd_infer.engines import base
    from p2phd_infer.engines.openvino_cpu import check_device
    from p2phd_infer.styles import _normalise
    assert base.resolve_device is resolve_device
    assert _normalise(None) == torch.device("cpu") and _normalise("cpu") == torch.device("cpu")
    with pytest.raises(OptionError, match="cpu or cuda"):
        _normalise("mps")
    assert check_device("auto") == torch.device("cpu")
    with pytest.raises(OptionError, match="runs on the CPU"):
        check_device("cuda:0")
    with pytest.raises(OptionError, match="cpu or cuda"):
        check_device("mps")
