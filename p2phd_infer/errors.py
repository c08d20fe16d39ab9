"""One error type for everything a user can get wrong or a run can meet.

Bad inputs, options and checkpoints are also ValueErrors, for callers of the Python API that
catch those; the CLI catches Error, never a bare ValueError.

Every error carries `path` (the file, URI or option at fault; "" when there is none) and `fault`
(what is wrong with it), and prints as `path: fault`. The CLI turns any of them into one `error:`
line; the runtime and the Ray executor report them as {file, fault} records, never as strings
parsed back.
"""
from __future__ import annotations

import os


class Error(Exception):
    """Base of every p2phd-infer error: (path, fault)."""

    def __init__(self, path: str | os.PathLike | None, fault: str | None = None):
        if fault is None:             # Error("fault"): nothing in particular is at fault
            path, fault = None, path
        self.path = "" if path is None else str(path)
        self.fault = str(fault)
        super().__init__(f"{self.path}: {self.fault}" if self.path else self.fault)

    def record(self) -> dict:
        return {"file": self.path, "fault": self.fault}


class InputError(Error, ValueError):
    """A bad input: a label map, an instance map, a photo, an in-memory id array."""


class OptionError(Error, ValueError):
    """A bad option or setting; `path` names the option (`--device`, `max_batch_size`)."""


class CheckpointError(Error, ValueError):
    """A model.pt, official checkpoint or trainer state that cannot be used."""


class EngineError(Error):
    """An engine file that cannot be opened, or a call an engine cannot take."""


class MissingDependency(Error):
    """An optional package or a device this feature needs is not present; the fault says what
    to install."""


class EngineFault(Error):
    """The engine raised on the batch this request was in; `error` is the engine's exception."""

    def __init__(self, name: str, error: BaseException, batch_size: int):
        self.error = error
        super().__init__(name, f"engine failed (batch of {batch_size}): "
                               f"{error.__class__.__name__}: {error}")


class OutputError(Error):
    """An output (image, model, summary) could not be written."""

    def __init__(self, path: str | os.PathLike, error: BaseException | str):
        fault = error if isinstance(error, str) else \
            f"could not write the output ({error.__class__.__name__}: {error})"
        super().__init__(path, fault)


class QueueFull(Error):
    """The runtime holds `max_queue_size` requests and was told not to block."""

    def __init__(self, fault: str = "the runtime's queue is full"):
        super().__init__("", fault)


class RuntimeClosed(Error):
    """submit() after close(), or the runtime stopped."""

    def __init__(self, fault: str = "the runtime is closed"):
        super().__init__("", fault)


class NotFound(Error):
    """What a request names (a model, a version, a path) does not exist here."""


class TooLarge(Error):
    """A request over a size limit of the server (its body, a decompressed body)."""


class AccessDenied(Error):
    """A request the server will not serve: another site's Origin, a Host header that is not the
    server's, a missing or wrong API key. `unauthenticated`: no valid credentials were given (as
    opposed to credentials that cannot help)."""

    def __init__(self, path, fault: str | None = None, *, unauthenticated: bool = False):
        super().__init__(path, fault)
        self.unauthenticated = unauthenticated


class Cancelled(Error):
    """The client went away before its answer; its frames not yet computed were dropped."""


class JobError(Error):
    """A distributed job stopped (a batch ran out of retries, the cluster went away)."""


def record_of(error: BaseException, name: str = "") -> dict:
    """{file, fault} for any exception: ours carry both; others are named by `name`."""
    if isinstance(error, Error):
        return error.record()
    return {"file": name, "fault": f"{error.__class__.__name__}: {error}"}
