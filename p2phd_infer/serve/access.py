"""Who may drive the server: the checks every request passes before any route runs.

A server on 127.0.0.1 is reachable by every web page its user opens: a page can send "simple"
cross-origin requests (text/plain JSON, multipart forms) without a CORS preflight, and through
DNS rebinding (a name of the attacker's that resolves to 127.0.0.1) it can even read the answers.
So, in this order:

  1. Host: the request's Host header must name the server: the bound address (for a wildcard
     bind, the address the connection came in on, and the machine's names), for a loopback or
     wildcard bind the loopback names, plus each --allow-host. A rebinding page's Host is its
     own name, so it is refused (403).
  2. Origin: a request with an Origin (browsers send one on every cross-origin request but
     top-level GETs), or with Sec-Fetch-Site cross-site, is refused (403) unless the Origin is
     the server's own (scheme://Host) or one of --allow-origin; allowed origins get CORS headers
     (and preflights an answer), so a page the user trusts can call the API.
  3. API key: with --api-key / --api-key-file, every request but the health probes carries
     `Authorization: Bearer KEY` (401 otherwise). A non-loopback bind needs a key unless
     --insecure-no-auth is given (cli/serve.py).

`AccessPolicy.check(...)` raises AccessDenied; the gRPC front door calls `check_key` with the
call's `authorization` metadata. `AccessMiddleware` is the ASGI middleware for HTTP.
"""
from __future__ import annotations

import hmac
import ipaddress
import json
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import AccessDenied, OptionError

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
# The probes an orchestrator sends without credentials; they reveal nothing but liveness.
OPEN_PATHS = ("/v2/health/live", "/v2/health/ready")
MAX_KEYS = 1000


def is_loopback(host: str) -> bool:
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def is_wildcard(host: str) -> bool:
    return host.strip("[]") in ("", "0.0.0.0", "::")


def read_key_file(path: str | Path) -> list[str]:
    """API keys, one per line ('#' starts a comment)."""
    p = Path(path)
    try:
        if p.stat().st_size > 1 << 20:
            raise OptionError("--api-key-file", f"{p}: over 1 MiB, not a key file")
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise OptionError("--api-key-file", f"{p}: cannot be read "
                                            f"({getattr(e, 'strerror', None) or e})") from None
    keys = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    keys = [k for k in keys if k]
    if not keys:
        raise OptionError("--api-key-file", f"{p}: holds no key")
    return keys


@dataclass(frozen=True)
class AccessPolicy:
    """hosts: Host names (lower case, no port, IPv6 without brackets) the server answers to;
    '*' in it allows any. origins: allowed cross-origin origins ('scheme://host[:port]'; '*'
    any). keys: accepted bearer keys (empty: no authentication)."""
    hosts: frozenset[str]
    origins: frozenset[str] = frozenset()
    keys: tuple[str, ...] = ()
    open_paths: tuple[str, ...] = OPEN_PATHS

    @classmethod
    def for_bind(cls, bind_host: str, *, allow_hosts=(), allow_origins=(), keys=()
                 ) -> "AccessPolicy":
        """The policy of a server bound to `bind_host`."""
        hosts = {bind_host.strip("[]").lower()}
        if is_loopback(bind_host) or is_wildcard(bind_host):
            hosts.update(LOOPBACK_NAMES)
        if is_wildcard(bind_host):
            # Reached by the machine's own names and addresses.
            name = socket.gethostname()
            hosts.update({name.lower(), socket.getfqdn().lower()})
            try:
                hosts.update(a[4][0].lower() for a in socket.getaddrinfo(name, None))
            except OSError:
                pass
        for h in allow_hosts:
            h = h.strip().lower()
            if not h or "/" in h:
                raise OptionError("--allow-host", f"{h!r} is not a host name or address")
            hosts.add(_host_only(h) if h != "*" else "*")
        origins = set()
        for o in allow_origins:
            o = o.strip().rstrip("/").lower()
            if o != "*" and ("://" not in o or o.count("/") > 2):
                raise OptionError("--allow-origin", f"{o!r}: give scheme://host[:port], "
                                                    f"e.g. https://app.example")
            origins.add(o)
        if len(keys) > MAX_KEYS or any(len(k) < 16 or not k.isprintable() or " " in k
                                       for k in keys):
            raise OptionError("--api-key", "each key is at least 16 printable characters "
                                           "without spaces")
        return cls(frozenset(hosts), frozenset(origins), tuple(keys))

    # ------------------------------------------------------------------ checks

    def check_host(self, host_header: str | None, local_address: str | None = None) -> str:
        """The Host header -> its host part, if the server answers to it. local_address: the
        address the connection came in on (a wildcard bind answers to each of its addresses;
        a rebinding page's Host is a name, never that address)."""
        if "*" in self.hosts:
            return _host_only(host_header or "")
        if not host_header:
            raise AccessDenied("Host", "the request has no Host header")
        host = _host_only(host_header)
        if host not in self.hosts and host != (local_address or "").lower():
            raise AccessDenied("Host", f"{host_header!r} is not a name of this server (start it "
                                       f"with --allow-host {host} to serve it)")
        return host

    def origin_allowed(self, origin: str, host_header: str, scheme: str) -> bool:
        o = origin.strip().rstrip("/").lower()
        if o in self.origins or "*" in self.origins:
            return True
        return o == f"{scheme}://{host_header.strip().lower()}"

    def check_origin(self, origin: str | None, fetch_site: str | None, host_header: str,
                     scheme: str) -> bool:
        """True when the request comes from an allowed other origin (CORS headers go back)."""
        if origin is None:
            if (fetch_site or "").lower() == "cross-site":
                raise AccessDenied("Origin", "a cross-site request without an Origin is "
                                             "refused")
            return False
        if self.origin_allowed(origin, host_header, scheme):
            return origin.strip().rstrip("/").lower() != \
                f"{scheme}://{host_header.strip().lower()}"
        raise AccessDenied("Origin", f"{origin!r} is another site; cross-origin requests are "
                                     f"refused (--allow-origin {origin} to allow it)")

    def check_key(self, authorization: str | None) -> None:
        """An `Authorization: Bearer KEY` value (HTTP header or gRPC metadata)."""
        if not self.keys:
            return
        scheme, _, given = (authorization or "").strip().partition(" ")
        given = given.strip()
        if scheme.lower() != "bearer" or not given:
            raise AccessDenied("Authorization", "this server needs an API key: "
                                                "'Authorization: Bearer KEY'",
                               unauthenticated=True)
        ok = False
        for k in self.keys:          # every key compared: the time says nothing about which
            ok |= hmac.compare_digest(k.encode(), given.encode("utf-8", "replace"))
        if not ok:
            raise AccessDenied("Authorization", "the API key is not valid",
                               unauthenticated=True)


def _host_only(host_header: str) -> str:
    """'Name:8000' -> 'name'; '[::1]:8000' -> '::1'."""
    h = host_header.strip().lower()
    if h.startswith("["):
        return h[1:h.index("]")] if "]" in h else h[1:]
    if h.count(":") == 1:
        return h.split(":", 1)[0]
    return h


class AccessMiddleware:
    """ASGI middleware applying an AccessPolicy to every HTTP request; `refused(kind, status)`
    counts each refusal (the server's metrics)."""

    def __init__(self, app, policy: AccessPolicy, refused: Callable[[str, int], None]):
        self.app, self.policy, self.refused = app, policy, refused

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {}
        for k, v in scope.get("headers", []):
            headers.setdefault(k.decode("latin-1").lower(), v.decode("latin-1"))
        p = self.policy
        cors = None
        try:
            host = headers.get("host")
            server = scope.get("server")
            p.check_host(host, server[0] if server else None)
            origin = headers.get("origin")
            if p.check_origin(origin, headers.get("sec-fetch-site"), host or "",
                              scope.get("scheme", "http")):
                cors = origin
            if scope["method"] == "OPTIONS" and cors is not None:
                return await self._preflight(send, cors, headers)
            if scope.get("path") not in p.open_paths:
                p.check_key(headers.get("authorization"))
        except AccessDenied as e:
            status = 401 if e.unauthenticated else 403
            self.refused("unauthenticated" if e.unauthenticated else "forbidden", status)
            return await _deny(send, status, " ".join(str(e).split()), e.unauthenticated)
        if cors is None:
            return await self.app(scope, receive, send)

        async def send_cors(message):
            if message["type"] == "http.response.start":
                message = dict(message)
                message["headers"] = list(message.get("headers", [])) + _cors_headers(cors)
            await send(message)
        return await self.app(scope, receive, send_cors)

    async def _preflight(self, send, origin: str, headers: dict):
        extra = _cors_headers(origin) + [
            (b"access-control-allow-methods", b"GET, POST, OPTIONS"),
            (b"access-control-allow-headers",
             headers.get("access-control-request-headers", "").encode("latin-1")[:1024]),
            (b"access-control-max-age", b"600")]
        await send({"type": "http.response.start", "status": 204, "headers": extra})
        await send({"type": "http.response.body", "body": b""})


def _cors_headers(origin: str) -> list:
    return [(b"access-control-allow-origin", origin.encode("latin-1")),
            (b"access-control-expose-headers", b"inference-header-content-length"),
            (b"vary", b"Origin")]


async def _deny(send, status: int, message: str, unauthenticated: bool):
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode())]
    if unauthenticated:
        headers.append((b"www-authenticate", b'Bearer realm="p2phd-infer"'))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
