"""The options of `serve` and `edit`, declared once (help, bounds, choices, defaults): the
command line is generated from them (p2phd_infer/cli/options.py) and a built options object
has been checked whole, before any engine is opened or port bound."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import OptionError
from ..limits import DEFAULT_MAX_PIXELS, MAX_BATCH, MAX_DELAY_US, MAX_PIXELS_LIMIT, MAX_QUEUE
from ..options import check, setting
from ..plan import EngineOptions
from .access import is_loopback

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


@dataclass
class ServerOptions(EngineOptions):
    """What serve and edit share: the engine, where to listen, batching, the frame bound."""
    host: str = setting("127.0.0.1", "Address to listen on (loopback by default).")
    port: int = setting(8000, "TCP port (0: any free port, printed at start).",
                        bounds=(0, 65535))
    max_batch_size: int = setting(
        4, "Most frames per engine call; frames of concurrent requests (and the editor's "
           "swatches) batch together.", bounds=(1, MAX_BATCH))
    max_pixels: int = setting(DEFAULT_MAX_PIXELS, "Refuse frames with more pixels than this.",
                              bounds=(1, MAX_PIXELS_LIMIT))
    log_level: str = setting("info", "The server's log lines at this level and above.",
                             choices=LOG_LEVELS)


@dataclass
class ServeOptions(ServerOptions):
    """Every option of `serve`."""
    grpc_port: int = setting(8001, "TCP port of the KServe v2 / Triton gRPC protocol, on --host "
                                   "too (0: any free port, printed at start).",
                             bounds=(0, 65535))
    no_grpc: bool = setting(False, "Serve HTTP only.")
    model_name: str = setting("p2phd", "The model's name in /v2/models/NAME.")
    max_queue_delay_us: int = setting(
        2000, "How long a batch waits for more frames, in microseconds.",
        bounds=(0, MAX_DELAY_US), renamed_from=("--max-delay-us",))
    max_queue: int = setting(64, "Frames admitted at once; past it requests get 503 with "
                                 "Retry-After.", bounds=(1, MAX_QUEUE))
    max_body_mb: float = setting(64.0, "Largest request body, in MiB (after decompression); "
                                       "larger ones get 413.", bounds=(0.001, 65536))
    style_cache: int = setting(4, "Features models: runtimes kept for (style, seed) keys "
                                  "besides the default.", bounds=(0, 256))
    model_repository: str | None = setting(
        None, "Serve every model of a Triton-style repository: DIR/NAME/VERSION/model.pt (or "
              ".onnx, .xml, .plan), optional DIR/NAME/config.pbtxt for its batching. Instead of "
              "--engine.", path="dir")
    model_control_mode: str = setting(
        "none", "With --model-repository: none (every model loaded at start, no load/unload) or "
                "explicit (the --load-model ones at start; /v2/repository load/unload).",
        choices=("none", "explicit"))
    load_model: tuple[str, ...] = setting(
        (), "Explicit model control: a model to load at start ('*': all); repeatable.",
        multiple=True)
    allow_origin: tuple[str, ...] = setting(
        (), "A web origin (https://app.example) whose pages may call this server; requests "
            "from any other site get 403. Repeatable; '*' allows any.", multiple=True)
    allow_host: tuple[str, ...] = setting(
        (), "A Host header name to serve besides the bound address (and, on loopback, "
            "localhost); others get 403 (DNS rebinding). Repeatable; '*' allows any.",
        multiple=True)
    api_key: str | None = setting(
        None, "Require 'Authorization: Bearer KEY' on every request but the health probes (at "
              "least 16 characters; the variable keeps it out of `ps`).",
        envvar="P2PHD_API_KEY")
    api_key_file: str | None = setting(
        None, "Like --api-key, the keys read from a file, one a line.", path="file")
    insecure_no_auth: bool = setting(
        False, "Allow a non-loopback --host without an API key (behind a proxy that "
               "authenticates).")
    instances: str = setting(
        "given", "auto: a request without an 'inst' input gets an instance map derived from its "
                 "label map (connected regions of each thing class, numbered class*1000+k).",
        choices=("given", "auto"))
    label_map: str | None = setting(
        None, "Requests' label maps are in this map's source ids (JSON {\"14\": 26} or "
              "`SOURCE ID` lines), mapped to the model's ids.", path="file")
    editor: bool = setting(
        False, "Also serve the editor page at / (`edit`'s page), its model menu listing the "
               "served models (with --model-repository, every ready one).")

    def __post_init__(self):
        check(self)
        if not self.no_grpc and self.grpc_port != 0 and self.grpc_port == self.port:
            raise OptionError("--grpc-port", f"{self.grpc_port} is the HTTP --port")
        if not self.model_name or "/" in self.model_name:
            raise OptionError("--model-name", f"{self.model_name!r} must be non-empty and "
                                              f"without '/'")
        if self.model_repository is not None and self.engine is not None:
            raise OptionError("--model-repository", "give --engine (one model) or "
                                                    "--model-repository, not both")
        if self.model_repository is None and (self.load_model or
                                              self.model_control_mode != "none"):
            raise OptionError("--model-control-mode", "model control needs --model-repository")
        if self.load_model and self.model_control_mode != "explicit":
            raise OptionError("--load-model", "needs --model-control-mode explicit (in mode "
                                              "none every model is loaded)")
        if self.editor and (self.api_key or self.api_key_file):
            raise OptionError("--editor", "a browser page cannot send the API key: serve the "
                                          "editor without --api-key (on loopback), or behind a "
                                          "proxy that adds the key")
        if not (self.api_key or self.api_key_file) and not is_loopback(self.host) and \
                not self.insecure_no_auth:
            raise OptionError("--host", f"{self.host} is reachable from other machines: give "
                                        f"--api-key or --api-key-file (or --insecure-no-auth "
                                        f"behind a proxy that authenticates)")

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * (1 << 20))


@dataclass
class EditOptions(ServerOptions):
    """Every option of `edit`."""
    label: str | None = setting(None, "", argument=True, path="file")
    instances: str | None = setting(None, "The instance map (16-bit PNG) of LABEL.",
                                    path="file")
    label_map: str | None = setting(
        None, "Label maps loaded (LABEL and in the page) are in this map's source ids or "
              "colours (JSON {\"14\": 26} or `SOURCE ID` lines), mapped to the model's ids.",
        path="file")

    def __post_init__(self):
        check(self)
        if self.instances is not None and self.label is None:
            raise OptionError("--instances", "needs a LABEL map")
