"""The KServe v2 (Open Inference Protocol) request and response codec, as NVIDIA Triton speaks it
over HTTP, with Triton's binary-tensor extension.

Protocol facts this module follows:
  - a request body is a JSON object {id?, parameters?, inputs: [{name, shape, datatype,
    parameters?, data?}], outputs?: [{name, parameters?}]}; a response {model_name, model_version?,
    id?, outputs: [{name, shape, datatype, parameters?, data?}]}; an error {"error": "<message>"};
  - JSON `data` is the tensor's elements in row-major order, flat or nested;
  - binary extension: the HTTP header `Inference-Header-Content-Length` gives the length of the
    JSON part; the raw tensors follow it in the order of the inputs that carry
    `parameters.binary_data_size` (little-endian, row-major, no padding). An output is returned
    raw when its request entry has `parameters.binary_data: true`, or for every output when the
    request's `parameters.binary_data_output` is true; the response then carries the same header
    and each raw output's `parameters.binary_data_size`, in output order after the JSON.

Nothing here touches the engine: `decode_request` turns bytes into checked numpy arrays (every
fault an InputError with a one-line message), `encode_response` turns arrays into bytes.
"""
from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError, TooLarge

HEADER_LENGTH = "inference-header-content-length"

# KServe datatype names -> numpy dtypes (little-endian: the binary extension's byte order).
DATATYPES = {
    "BOOL": np.dtype("bool"), "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"), "UINT64": np.dtype("<u8"), "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"), "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
}
INTEGER_TYPES = ("UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64")
FLOAT_TYPES = ("FP16", "FP32", "FP64")
DATATYPE_OF = {v: k for k, v in DATATYPES.items()}


@dataclass
class Tensor:
    name: str
    datatype: str
    array: np.ndarray


@dataclass
class InferRequest:
    id: str | None
    inputs: dict[str, Tensor]
    parameters: dict = field(default_factory=dict)
    outputs: list[tuple[str, bool]] = field(default_factory=list)   # (name, binary)
    binary_default: bool = False      # outputs not listed: raw (binary_data_output) or JSON
    # output name -> its shared_memory_* parameters, for outputs written into a region
    output_parameters: dict = field(default_factory=dict)


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """A request body sent with Content-Encoding gzip or deflate (tritonclient's
    request_compression_algorithm) -> its bytes, never more than `limit` of them."""
    encoding = (encoding or "identity").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise InputError("Content-Encoding", f"{encoding!r} is not supported (gzip, deflate)")
    d = zlib.decompressobj(16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as e:
        raise InputError("Content-Encoding", f"the {encoding} body does not decompress ({e})") \
            from None
    if len(out) > limit or d.unconsumed_tail:
        raise TooLarge(f"the decompressed body is over the limit of {limit:,} bytes")
    return out


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number (non-finite values are refused)")


def _finite(text: str) -> float:
    x = float(text)
    if not math.isfinite(x):
        raise ValueError(f"{text} is outside the range of a double")
    return x


def loads(data: bytes | str, what: str):
    """JSON text -> its value, refusing what is not JSON (NaN, Infinity, numbers that overflow a
    double) and nesting deeper than the interpreter's recursion limit: an InputError naming
    `what`, never a traceback."""
    try:
        return json.loads(data, parse_constant=_no_constant, parse_float=_finite)
    except RecursionError:
        raise InputError(what, "the JSON is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(what, f"not valid JSON ({' '.join(str(e).split())})") from None


def _obj(x, what: str) -> dict:
    if not isinstance(x, dict):
        raise InputError(what, f"must be a JSON object, not {type(x).__name__}")
    return x


def _shape(x, what: str) -> tuple[int, ...]:
    if not isinstance(x, list) or not all(isinstance(d, int) and not isinstance(d, bool)
                                          and d >= 0 for d in x):
        raise InputError(what, f"shape {x!r} must be a list of non-negative integers")
    return tuple(x)


def check_tensor(name: str, datatype, shape: tuple[int, ...], max_elements: int
                 ) -> tuple[np.dtype, int]:
    """A tensor's datatype name and shape -> (numpy dtype, element count); InputError for an
    unknown datatype or more than `max_elements` elements."""
    if datatype not in DATATYPES:
        raise InputError(name, f"datatype {datatype!r} is not one of {', '.join(DATATYPES)}")
    count = math.prod(shape)
    if count > max_elements:
        raise InputError(name, f"shape {list(shape)} has {count:,} elements, above the limit of "
                               f"{max_elements:,}")
    return DATATYPES[datatype], count


def tensor_from_raw(name: str, datatype: str, shape, raw, max_elements: int) -> Tensor:
    """Raw little-endian row-major bytes (the binary extension; gRPC's raw_input_contents; a
    shared-memory region) -> a Tensor viewing them, checked to be exactly the shape's size."""
    shape = _shape(list(shape), name)
    dtype, count = check_tensor(name, datatype, shape, max_elements)
    if len(raw) != count * dtype.itemsize:
        raise InputError(name, f"{len(raw)} bytes of data; shape {list(shape)} of {datatype} "
                               f"needs {count * dtype.itemsize}")
    return Tensor(name, datatype, np.frombuffer(raw, dtype=dtype).reshape(shape))


def tensor_from_values(name: str, datatype: str, shape, values, max_elements: int) -> Tensor:
    """A list of element values (JSON `data`, flat or nested; gRPC's typed contents) -> a
    Tensor, refusing values the datatype cannot hold."""
    shape = _shape(list(shape), name)
    dtype, _ = check_tensor(name, datatype, shape, max_elements)
    return Tensor(name, datatype, _from_json(list(values), dtype, shape, name))


def decode_request(body: bytes, header_length: str | None, max_elements: int,
                   shared_memory=None) -> InferRequest:
    """Bytes of an infer request (and its Inference-Header-Content-Length, if any) -> the
    request with each input as a numpy array of its shape. InputError for anything malformed.
    shared_memory (shared_memory.SharedMemory): where inputs with `shared_memory_region`
    parameters are read from (none: such inputs are refused)."""
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            n = -1
        if not 0 <= n <= len(body):
            raise InputError("Inference-Header-Content-Length",
                             f"{header_length!r} is not a length within the {len(body)}-byte body")
        head, blob = body[:n], memoryview(body)[n:]
    else:
        head, blob = body, memoryview(b"")
    doc = _obj(loads(head, "the inference header"), "request")
    params = _obj(doc.get("parameters") or {}, "request parameters")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InputError("request", "'inputs' must be a non-empty list")
    inputs: dict[str, Tensor] = {}
    offset = 0
    for i, raw in enumerate(raw_inputs):
        raw = _obj(raw, f"inputs[{i}]")
        name = raw.get("name")
        if not isinstance(name, str) or not name:
            raise InputError(f"inputs[{i}]", "has no 'name'")
        if name in inputs:
            raise InputError(name, "given twice")
        datatype = raw.get("datatype")
        shape = _shape(raw.get("shape"), name)
        dtype, count = check_tensor(name, datatype, shape, max_elements)
        iparams = _obj(raw.get("parameters") or {}, f"{name} parameters")
        size = iparams.get("binary_data_size")
        if "shared_memory_region" in iparams:
            if shared_memory is None:
                raise InputError(name, "shared memory is not available on this endpoint")
            array = tensor_from_raw(name, datatype, shape,
                                    shared_memory.read(iparams, name, count * dtype.itemsize),
                                    max_elements).array
        elif size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise InputError(name, f"binary_data_size {size!r} is not a byte count")
            if size != count * dtype.itemsize:
                raise InputError(name, f"binary_data_size {size} does not match shape "
                                       f"{list(shape)} of {datatype} "
                                       f"({count * dtype.itemsize} bytes)")
            if offset + size > len(blob):
                raise InputError(name, f"binary data ends at byte {offset + size}, the body has "
                                       f"{len(blob)} bytes after the header")
            array = tensor_from_raw(name, datatype, shape, blob[offset:offset + size],
                                    max_elements).array
            offset += size
        else:
            if "data" not in raw:
                raise InputError(name, "has neither 'data' nor parameters.binary_data_size")
            array = _from_json(raw["data"], dtype, shape, name)
        inputs[name] = Tensor(name, datatype, array)
    if offset != len(blob):
        raise InputError("request", f"{len(blob) - offset} bytes of binary data after the "
                                    f"header belong to no input")
    binary_default = params.get("binary_data_output") is True
    outputs, output_parameters = [], {}
    raw_outputs = doc.get("outputs")
    if raw_outputs is not None:
        if not isinstance(raw_outputs, list):
            raise InputError("request", "'outputs' must be a list")
        for i, raw in enumerate(raw_outputs):
            raw = _obj(raw, f"outputs[{i}]")
            name = raw.get("name")
            if not isinstance(name, str):
                raise InputError(f"outputs[{i}]", "has no 'name'")
            oparams = _obj(raw.get("parameters") or {}, f"{name} parameters")
            if "classification" in oparams:
                raise InputError(name, "the classification extension is not supported")
            if "shared_memory_region" in oparams:
                output_parameters[name] = oparams
            binary = oparams.get("binary_data")
            outputs.append((name, binary_default if binary is None else binary is True))
    rid = doc.get("id")
    return InferRequest(None if rid is None else str(rid), inputs, params, outputs,
                        binary_default, output_parameters)


def _from_json(data, dtype: np.dtype, shape: tuple[int, ...], name: str) -> np.ndarray:
    """JSON `data` (flat or nested, row-major) -> an array of `shape`, refusing values the
    datatype cannot hold (a float for an integer type, 300 for UINT8)."""
    if not isinstance(data, list):
        raise InputError(name, "'data' must be a list")
    try:
        wide = np.asarray(data, dtype=np.float64 if dtype.kind == "f" else
                          np.bool_ if dtype.kind == "b" else np.int64)
        # An empty list has no values to be wrong (numpy types it float64): its size is checked
        # against the shape below.
        if dtype.kind in "iu" and wide.size and np.asarray(data).dtype.kind not in "iub":
            raise ValueError("non-integer values")
    except (ValueError, TypeError, OverflowError) as e:
        raise InputError(name, f"'data' is not a list of {DATATYPE_OF[dtype]} values ({e})") \
            from None
    if wide.size != math.prod(shape):
        raise InputError(name, f"'data' has {wide.size} elements, shape {list(shape)} needs "
                               f"{math.prod(shape)}")
    if dtype.kind in "iu" and wide.size:
        info = np.iinfo(dtype)
        lo, hi = int(wide.min()), int(wide.max())
        if lo < info.min or hi > info.max:
            raise InputError(name, f"values {lo}..{hi} do not fit {DATATYPE_OF[dtype]}")
    return wide.reshape(shape).astype(dtype, copy=False)


def encode_response(model_name: str, model_version: str, request_id: str | None,
                    outputs: list[tuple[str, np.ndarray, bool]],
                    shared: dict | None = None) -> tuple[bytes, dict]:
    """(name, array, binary) per output -> (body, headers). Raw outputs follow the JSON part,
    which the Inference-Header-Content-Length header measures. shared: output name -> the
    parameters of the region it was written to (its entry then carries those, and no data)."""
    doc: dict = {"model_name": model_name, "model_version": model_version, "outputs": []}
    if request_id is not None:
        doc["id"] = request_id
    blobs = []
    for name, array, binary in outputs:
        array = np.ascontiguousarray(array)
        little = array.dtype.newbyteorder("<") if array.dtype.itemsize > 1 else array.dtype
        entry = {"name": name, "datatype": DATATYPE_OF[little], "shape": list(array.shape)}
        if shared and name in shared:
            # binary_data_size 0: Triton's C++ client (perf_analyzer) reads it from every output
            # that has parameters; no bytes follow for an output in shared memory.
            entry["parameters"] = {**shared[name], "binary_data_size": 0}
        elif binary:
            raw = array.astype(little, copy=False).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = array.reshape(-1).tolist()
        doc["outputs"].append(entry)
    head = json.dumps(doc, separators=(",", ":")).encode()
    if not blobs:
        return head, {"content-type": "application/json"}
    return b"".join([head, *blobs]), {"content-type": "application/octet-stream",
                                      "inference-header-content-length": str(len(head))}
