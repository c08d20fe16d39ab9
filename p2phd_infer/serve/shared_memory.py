"""Triton's shared-memory extensions: regions a client on the same host registers once, then names
in its infer requests, so tensors pass through memory instead of the request body.

    system   POSIX shared memory (shm_open's objects, /dev/shm/<key> on Linux): register (name,
             key, offset, byte_size); the server maps [offset, offset + byte_size) of the object.
    cuda     a CUDA IPC handle (cudaIpcGetMemHandle's 64 bytes) of device memory, with its
             device id and byte size; the server opens it with cudaIpcOpenMemHandle.

An input or a requested output names a region with the parameters `shared_memory_region`,
`shared_memory_byte_size` and (optionally) `shared_memory_offset`, an offset inside the region.
Every access is checked: the region exists, offset and size are non-negative integers, the range
lies inside the region, an input's size is its tensor's size, an output's size holds the
output. Each fault is an InputError naming the region or tensor, in one line.

Inputs are copied out of a region when the request is decoded (one memcpy): a client may reuse
the region as soon as it has its answer, and unregistering a region never pulls memory from under
a frame still queued. Outputs are written into their region before the answer is sent.

CUDA regions are copied through the host (cudaMemcpy device->host for inputs, host->device for
outputs): the dataplane takes host arrays. That half needs a CUDA device and has not been run
here.
"""
from __future__ import annotations

import ctypes
import mmap
import os
import stat
import threading
from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError, MissingDependency, NotFound

SHM_DIR = "/dev/shm"
CUDA_IPC_HANDLE_BYTES = 64
# The parameters naming a region, as tritonclient's set_shared_memory writes them.
REGION, BYTE_SIZE, OFFSET = "shared_memory_region", "shared_memory_byte_size", \
    "shared_memory_offset"


def _count(value, what: str, name: str) -> int:
    """A byte count or offset from a request: a non-negative integer (not a bool, not a float)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise InputError(name, f"{what} {value!r} is not a non-negative integer")
    return int(value)


@dataclass
class _Region:
    name: str
    byte_size: int
    kind: str                       # "system" or "cuda"
    key: str = ""                   # system: the shm object's key
    offset: int = 0                 # system: where the region starts in the object
    device_id: int = 0              # cuda
    mm: mmap.mmap | None = None     # system: the mapping (from a page-aligned start)
    skip: int = 0                   # system: bytes of the mapping before the region
    ptr: int = 0                    # cuda: the device pointer cudaIpcOpenMemHandle gave
    fd: int = -1                    # system: the object, kept open to check its size
    lock: threading.Lock = field(default_factory=threading.Lock)   # an access vs unregister
    closed: bool = False

    def status(self) -> dict:
        if self.kind == "system":
            return {"name": self.name, "key": self.key, "offset": self.offset,
                    "byte_size": self.byte_size}
        return {"name": self.name, "device_id": self.device_id, "byte_size": self.byte_size}


class SharedMemory:
    """The regions registered with one server (every front door shares one), thread-safe."""

    def __init__(self):
        self._lock = threading.Lock()
        self._regions: dict[str, _Region] = {}
        self._cuda: _Cuda | None = None

    # ------------------------------------------------------------------ registration

    def register_system(self, name: str, key: str, offset, byte_size) -> None:
        name, offset, byte_size = self._new_region(name, offset, "offset", byte_size)
        path = _shm_path(key, name)
        try:
            fd = os.open(path, os.O_RDWR | getattr(os, "O_NOFOLLOW", 0) | os.O_CLOEXEC)
        except FileNotFoundError:
            raise InputError(name, f"no shared memory object with key {key!r} "
                                   f"({path} does not exist)") from None
        except OSError as e:
            raise InputError(name, f"cannot open shared memory key {key!r} "
                                   f"({e.strerror or e})") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise InputError(name, f"key {key!r} is not a shared memory object")
            if offset + byte_size > st.st_size:
                raise InputError(name, f"offset {offset} + byte_size {byte_size} = "
                                       f"{offset + byte_size} is past the end of key {key!r} "
                                       f"({st.st_size} bytes)")
            start = offset - offset % mmap.ALLOCATIONGRANULARITY
            mm = mmap.mmap(fd, offset - start + byte_size, mmap.MAP_SHARED,
                           mmap.PROT_READ | mmap.PROT_WRITE, offset=start)
        except BaseException:
            os.close(fd)
            raise
        region = _Region(name, byte_size, "system", key=key, offset=offset, mm=mm,
                         skip=offset - start, fd=fd)
        self._add(region)

    def register_cuda(self, name: str, raw_handle: bytes, device_id, byte_size) -> None:
        name, device_id, byte_size = self._new_region(name, device_id, "device_id", byte_size)
        if not isinstance(raw_handle, (bytes, bytearray)) or \
                len(raw_handle) != CUDA_IPC_HANDLE_BYTES:
            n = len(raw_handle) if isinstance(raw_handle, (bytes, bytearray)) else "no"
            raise InputError(name, f"raw_handle has {n} bytes; a CUDA IPC memory handle has "
                                   f"{CUDA_IPC_HANDLE_BYTES}")
        with self._lock:
            if self._cuda is None:
                self._cuda = _Cuda()
            cuda = self._cuda
        ptr = cuda.open(bytes(raw_handle), device_id, name)
        try:
            self._add(_Region(name, byte_size, "cuda", device_id=device_id, ptr=ptr))
        except BaseException:
            cuda.close(ptr, device_id)
            raise

    def _new_region(self, name, where, what: str, byte_size) -> tuple[str, int, int]:
        """A new region's (name, offset or device id, byte size), checked."""
        name = self._new_name(name)
        where = _count(where, what, name)
        byte_size = _count(byte_size, "byte_size", name)
        if byte_size == 0:
            raise InputError(name, "byte_size 0: a region holds at least one byte")
        return name, where, byte_size

    def _new_name(self, name) -> str:
        if not isinstance(name, str) or not name or len(name) > 256 or \
                not name.isprintable():
            raise InputError("shared memory", f"region name {name!r} must be 1-256 printable "
                                              f"characters")
        with self._lock:
            if name in self._regions:
                raise InputError(name, "a shared memory region of this name is already "
                                       "registered")
        return name

    def _add(self, region: _Region) -> None:
        with self._lock:
            if region.name in self._regions:
                self._release(region)
                raise InputError(region.name, "a shared memory region of this name is already "
                                              "registered")
            self._regions[region.name] = region

    def unregister(self, kind: str, name: str = "") -> None:
        """Unregister the `kind` region `name`, or every `kind` region when name is empty (as
        Triton does). NotFound for a name that is not registered."""
        with self._lock:
            gone = self._named(kind, name)
            for r in gone:
                del self._regions[r.name]
        for r in gone:
            self._release(r)

    def status(self, kind: str, name: str = "") -> list[dict]:
        with self._lock:
            return [r.status() for r in self._named(kind, name)]

    def _named(self, kind: str, name: str) -> list[_Region]:
        """The `kind` region `name` (NotFound if there is none), or every `kind` region when
        name is empty. Call with the lock held."""
        if not name:
            return [r for r in self._regions.values() if r.kind == kind]
        region = self._regions.get(name)
        if region is None or region.kind != kind:
            raise NotFound(name, f"no {kind} shared memory region of this name is registered")
        return [region]

    def close(self) -> None:
        with self._lock:
            regions = list(self._regions.values())
            self._regions.clear()
        for r in regions:
            self._release(r)

    def _release(self, region: _Region) -> None:
        with region.lock:             # after any read or write of it in progress
            region.closed = True
            if region.mm is not None:
                region.mm.close()
                os.close(region.fd)
            if region.ptr and self._cuda is not None:
                self._cuda.close(region.ptr, region.device_id)

    @staticmethod
    def _usable(region: _Region, offset: int, size: int, tensor: str) -> None:
        """Call with region.lock held: the region is still registered, and a system region's
        object still holds the range (a client that shrank it would otherwise crash the server
        with SIGBUS on the next access)."""
        if region.closed:
            raise InputError(tensor, f"shared memory region {region.name!r} was unregistered")
        if region.kind == "system" and \
                os.fstat(region.fd).st_size < region.offset + offset + size:
            raise InputError(tensor, f"the shared memory object of region {region.name!r} "
                                     f"(key {region.key!r}) shrank below its registered size")

    # ------------------------------------------------------------------ tensors

    def _span(self, params: dict, tensor: str, need: int | None) -> tuple[_Region, int, int]:
        """(region, offset, byte_size) of a tensor's shared-memory parameters, checked."""
        name = params.get(REGION)
        if not isinstance(name, str) or not name:
            raise InputError(tensor, f"{REGION} {name!r} is not a region name")
        if BYTE_SIZE not in params:
            raise InputError(tensor, f"{REGION} {name!r} is given without {BYTE_SIZE}")
        size = _count(params.get(BYTE_SIZE), BYTE_SIZE, tensor)
        offset = _count(params.get(OFFSET, 0), OFFSET, tensor)
        with self._lock:
            region = self._regions.get(name)
        if region is None:
            raise InputError(tensor, f"shared memory region {name!r} is not registered")
        if offset + size > region.byte_size:
            raise InputError(tensor, f"{OFFSET} {offset} + {BYTE_SIZE} {size} = "
                                     f"{offset + size} is past the end of region {name!r} "
                                     f"({region.byte_size} bytes)")
        if need is not None and size != need:
            raise InputError(tensor, f"{BYTE_SIZE} {size} does not match its shape and "
                                     f"datatype ({need} bytes)")
        return region, offset, size

    def check_output(self, params: dict, tensor: str, nbytes: int) -> None:
        """Refuse, before any work, an output whose region cannot hold its `nbytes`."""
        region, offset, size = self._span(params, tensor, None)
        if nbytes > size:
            raise InputError(tensor, f"{BYTE_SIZE} {size} is too small for the output "
                                     f"({nbytes} bytes)")

    def read(self, params: dict, tensor: str, need: int) -> bytes:
        """The `need` bytes of an input held in a region (a copy)."""
        region, offset, size = self._span(params, tensor, need)
        with region.lock:
            self._usable(region, offset, size, tensor)
            if region.kind == "system":
                start = region.skip + offset
                return region.mm[start:start + size]
            out = np.empty(size, np.uint8)
            self._cuda.copy_to_host(out, region.ptr + offset, region.device_id, tensor)
            return out.data.cast("B")

    def write(self, params: dict, tensor: str, array: np.ndarray) -> int:
        """Write an output into the region its request named; returns the bytes written."""
        data = np.ascontiguousarray(array)
        region, offset, size = self._span(params, tensor, None)
        if data.nbytes > size:
            raise InputError(tensor, f"{BYTE_SIZE} {size} is too small for the output "
                                     f"({list(data.shape)} {data.dtype}, {data.nbytes} bytes)")
        with region.lock:
            self._usable(region, offset, data.nbytes, tensor)
            if region.kind == "system":
                start = region.skip + offset
                region.mm[start:start + data.nbytes] = data.reshape(-1).view(np.uint8)
            else:
                self._cuda.copy_from_host(region.ptr + offset, data, region.device_id, tensor)
        return data.nbytes


def uses_shared_memory(params) -> bool:
    return isinstance(params, dict) and REGION in params


def _shm_path(key, name: str) -> str:
    """/dev/shm/<key> for a POSIX shm key ('/name' or 'name'), refusing keys that would leave
    that folder."""
    if not isinstance(key, str) or not key:
        raise InputError(name, f"key {key!r} is not a shared memory key")
    base = key[1:] if key.startswith("/") else key
    if not base or "/" in base or base in (".", "..") or "\0" in base:
        raise InputError(name, f"key {key!r} is not a shared memory key (one name, as "
                               f"shm_open takes it)")
    if not os.path.isdir(SHM_DIR):
        raise MissingDependency(name, f"system shared memory needs {SHM_DIR} (Linux)")
    return os.path.join(SHM_DIR, base)


class _Cuda:
    """The few CUDA runtime calls CUDA shared memory needs, through ctypes on the libcudart that
    PyTorch loaded (so the server and PyTorch share one runtime and its primary contexts)."""

    MEMCPY_HOST_TO_DEVICE, MEMCPY_DEVICE_TO_HOST = 1, 2
    IPC_LAZY_ENABLE_PEER_ACCESS = 1

    def __init__(self):
        import torch
        if not torch.cuda.is_available():
            raise MissingDependency("cuda shared memory", "needs a CUDA device; this server "
                                                          "has none")
        torch.cuda.init()
        self.lib = _load_cudart()
        self._lock = threading.Lock()

    def _check(self, code: int, what: str, name: str) -> None:
        if code != 0:
            self.lib.cudaGetErrorString.restype = ctypes.c_char_p
            msg = self.lib.cudaGetErrorString(code).decode(errors="replace")
            raise InputError(name, f"{what} failed: CUDA error {code} ({msg})")

    def open(self, handle: bytes, device: int, name: str) -> int:
        import torch
        if device >= torch.cuda.device_count():
            raise InputError(name, f"device_id {device}: this server has "
                                   f"{torch.cuda.device_count()} CUDA device(s)")

        class Handle(ctypes.Structure):
            _fields_ = [("reserved", ctypes.c_char * CUDA_IPC_HANDLE_BYTES)]

        ptr = ctypes.c_void_p()
        with self._lock:
            self._check(self.lib.cudaSetDevice(device), "cudaSetDevice", name)
            self._check(self.lib.cudaIpcOpenMemHandle(ctypes.byref(ptr), Handle(handle),
                                                      self.IPC_LAZY_ENABLE_PEER_ACCESS),
                        "cudaIpcOpenMemHandle", name)
        return ptr.value

    def close(self, ptr: int, device: int) -> None:
        with self._lock:
            self.lib.cudaSetDevice(device)
            self.lib.cudaIpcCloseMemHandle(ctypes.c_void_p(ptr))

    def copy_to_host(self, out: np.ndarray, src: int, device: int, name: str) -> None:
        with self._lock:
            self._check(self.lib.cudaSetDevice(device), "cudaSetDevice", name)
            self._check(self.lib.cudaMemcpy(ctypes.c_void_p(out.ctypes.data), ctypes.c_void_p(src),
                                            ctypes.c_size_t(out.nbytes),
                                            self.MEMCPY_DEVICE_TO_HOST), "cudaMemcpy", name)

    def copy_from_host(self, dst: int, data: np.ndarray, device: int, name: str) -> None:
        with self._lock:
            self._check(self.lib.cudaSetDevice(device), "cudaSetDevice", name)
            self._check(self.lib.cudaMemcpy(ctypes.c_void_p(dst), ctypes.c_void_p(data.ctypes.data),
                                            ctypes.c_size_t(data.nbytes),
                                            self.MEMCPY_HOST_TO_DEVICE), "cudaMemcpy", name)


def _load_cudart():
    """libcudart: the one PyTorch's CUDA wheel depends on (already loaded, found by soname), or
    the system's."""
    import glob
    names = ["libcudart.so.13", "libcudart.so.12", "libcudart.so"]
    try:
        import nvidia
        for base in nvidia.__path__:
            names += sorted(glob.glob(os.path.join(base, "cuda_runtime", "lib", "libcudart.so*")))
            names += sorted(glob.glob(os.path.join(base, "cu13", "lib", "libcudart.so*")))
    except ImportError:
        pass
    for n in names:
        try:
            return ctypes.CDLL(n)
        except OSError:
            continue
    raise MissingDependency("cuda shared memory", "libcudart (the CUDA runtime) was not found")
