"""HTTP for registries: TLS, proxies, retries, and the one place where urllib3's
exceptions become ours.

urllib3 was chosen by measurement (docs/performance.md): streaming a 512 MiB
blob from a loopback registry ran at ~2.3 GB/s with urllib3 against ~0.75 GB/s
with httpx on the same machine.
"""

from __future__ import annotations

import email.utils
import errno
import ssl
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import urllib3
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import MaxRetryError, ProtocolError, SSLError

from airbundle import __version__
from airbundle.errors import ResponseTooLargeError, TransportError
from airbundle.format.reference import is_loopback_registry

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
USER_AGENT = f"airbundle/{__version__}"

# OpenSSL's reasons (ssl.SSLError.reason) for a handshake that met plain HTTP,
# and for a server that wants a client certificate.
_PLAIN_HTTP_REASONS = frozenset(
    {
        "WRONG_VERSION_NUMBER",
        "RECORD_LAYER_FAILURE",
        "HTTP_REQUEST",
        "UNKNOWN_PROTOCOL",
        "PACKET_LENGTH_TOO_LONG",
    }
)
_CLIENT_CERT_REASONS = frozenset(
    {"TLSV13_ALERT_CERTIFICATE_REQUIRED", "SSLV3_ALERT_HANDSHAKE_FAILURE"}
)


@dataclass(frozen=True)
class TLSConfig:
    ca_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    # Hosts where plain HTTP (and unverified TLS) is allowed, as Docker's
    # --insecure-registry. Loopback registries are always allowed plain HTTP.
    insecure_hosts: frozenset[str] = frozenset()

    def ssl_context(self, *, verify: bool = True) -> ssl.SSLContext:
        """The system's CAs (or SSL_CERT_FILE) plus --ca-file, and the client
        certificate if one was given (also for git's smart HTTP push)."""
        ctx = ssl.create_default_context()
        if self.ca_file is not None:
            ctx.load_verify_locations(cafile=str(self.ca_file))
        if self.client_cert is not None:
            ctx.load_cert_chain(
                str(self.client_cert), str(self.client_key) if self.client_key else None
            )
        if not verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    backoff: float = 0.5  # seconds, doubled each attempt
    max_wait: float = 30.0
    connect_timeout: float = 15.0
    read_timeout: float = 120.0


@dataclass
class Response:
    status: int
    headers: Mapping[str, str]
    raw: urllib3.BaseHTTPResponse
    url: str
    # urllib3 already read the body of a request made with stream=False;
    # reading raw again would give b"".
    preloaded: bool = False

    def read(self) -> bytes:
        return self.read_limited(1 << 62)

    def read_limited(self, limit: int) -> bytes:
        try:
            data = (
                bytes(self.raw.data or b"") if self.preloaded else bytes(self.raw.read(limit + 1))
            )
        except (Urllib3Error, OSError) as exc:
            raise TransportError(f"{self.url}: connection failed while reading: {exc}") from exc
        if len(data) > limit:
            self.raw.release_conn()
            raise ResponseTooLargeError(f"{self.url}: response larger than {limit} bytes")
        return data

    def stream(self, chunk: int) -> Iterable[bytes]:
        try:
            yield from self.raw.stream(chunk)
        except (Urllib3Error, OSError) as exc:
            raise TransportError(f"{self.url}: connection failed while reading: {exc}") from exc

    def close(self) -> None:
        self.raw.release_conn()


def retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP date)."""
    value = headers.get("retry-after") or headers.get("Retry-After")
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = datetime.fromtimestamp(now if now is not None else time.time(), UTC)
    return max(0.0, (when - current).total_seconds())


@dataclass
class Transport:
    tls: TLSConfig = field(default_factory=TLSConfig)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    sleep: Callable[[float], None] = time.sleep
    _pools: dict[tuple[str | None, bool], urllib3.PoolManager] = field(default_factory=dict)
    _schemes: dict[str, str] = field(default_factory=dict)
    _proxies: dict[str, str | None] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _proxy(self, scheme: str, host: str) -> str | None:
        """The proxy for a scheme and host, from the environment, decided once:
        reading os.environ on every request costs seconds over thousands."""
        key = f"{scheme}://{host}"
        with self._lock:
            if key in self._proxies:
                return self._proxies[key]
        proxy = None
        bypass: Callable[[str], bool] = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]
        if not bypass(host.split(":")[0]):
            proxy = urllib.request.getproxies_environment().get(scheme)
        with self._lock:
            self._proxies[key] = proxy
        return proxy

    def _pool(self, url: str, host: str) -> urllib3.PoolManager:
        scheme = url.split("://", 1)[0]
        proxy = self._proxy(scheme, host)
        verify = host not in self.tls.insecure_hosts
        key = (proxy, verify)
        with self._lock:
            pool = self._pools.get(key)
            if pool is None:
                kwargs: dict[str, Any] = {
                    "ssl_context": self.tls.ssl_context(verify=verify),
                    "num_pools": 16,
                    "maxsize": 16,
                    "retries": False,
                    "timeout": urllib3.Timeout(
                        connect=self.retry.connect_timeout, read=self.retry.read_timeout
                    ),
                    "headers": {"User-Agent": USER_AGENT},
                }
                if not verify:
                    kwargs["cert_reqs"] = "CERT_NONE"
                pool = (
                    urllib3.ProxyManager(proxy, **kwargs)
                    if proxy
                    else urllib3.PoolManager(**kwargs)
                )
                self._pools[key] = pool
            return pool

    def base_url(self, host: str) -> str:
        """https://host, or http://host for loopback/insecure hosts without TLS."""
        with self._lock:
            known = self._schemes.get(host)
        if known:
            return f"{known}://{host}"
        scheme = "https"
        if is_loopback_registry(host) or host in self.tls.insecure_hosts:
            # Docker's rule: try TLS first, fall back to plain HTTP only for
            # hosts where that is allowed and only when TLS is not spoken.
            try:
                probe = self._send("GET", f"https://{host}/v2/", host, {}, None, stream=False)
                probe.close()
            except TransportError as exc:
                if _ssl_reason(exc) not in _PLAIN_HTTP_REASONS:
                    raise
                scheme = "http"
        with self._lock:
            self._schemes[host] = scheme
        return f"{scheme}://{host}"

    def _send(
        self,
        method: str,
        url: str,
        host: str,
        headers: Mapping[str, str],
        body: Any,
        *,
        stream: bool,
        redirect: bool = True,
    ) -> Response:
        pool = self._pool(url, host)
        try:
            raw = pool.request(
                method,
                url,
                # Per-request headers replace the pool's defaults in urllib3.
                headers={"User-Agent": USER_AGENT, **headers},
                body=body,
                preload_content=not stream,
                redirect=redirect,
                retries=False,
            )
        except SSLError as exc:
            if _ssl_reason(exc) in _CLIENT_CERT_REASONS:
                hint = "the registry wants a client certificate: give --cert and --cert-key"
            else:
                hint = (
                    "give the registry's CA with --ca-file (or SSL_CERT_FILE), or allow "
                    "this host with --insecure-registry"
                )
            raise TransportError(f"{method} {url}: TLS failed: {exc}", hint=hint) from exc
        except (Urllib3Error, OSError) as exc:
            raise TransportError(f"{method} {url}: {_reason(exc)}") from exc
        return Response(raw.status, raw.headers, raw, url, preloaded=not stream)

    def request(
        self,
        method: str,
        url: str,
        *,
        host: str,
        headers: Mapping[str, str] | None = None,
        body: bytes | Iterator[bytes] | None = None,
        stream: bool = False,
        retry: bool = True,
        redirect: bool = True,
    ) -> Response:
        """One request, retried with backoff on connection errors, 429 and 5xx.

        Only bodies held in memory are retried; streamed uploads handle their
        own resumption (see client.upload_blob).
        """
        attempts = self.retry.attempts if retry else 1
        delay = self.retry.backoff
        last: TransportError | None = None
        for attempt in range(attempts):
            try:
                response = self._send(
                    method, url, host, headers or {}, body, stream=stream, redirect=redirect
                )
            except TransportError as exc:
                last = exc
                if attempt + 1 < attempts and not _permanent(exc):
                    self.sleep(delay)
                    delay = min(delay * 2, self.retry.max_wait)
                    continue
                raise
            if response.status in RETRY_STATUSES and attempt + 1 < attempts:
                wait = retry_after(response.headers)
                response.raw.drain_conn()
                response.close()
                self.sleep(min(wait if wait is not None else delay, self.retry.max_wait))
                delay = min(delay * 2, self.retry.max_wait)
                continue
            return response
        assert last is not None
        raise last


def _permanent(exc: BaseException) -> bool:
    """No route to the host: waiting will not help (an air gap, or a typo)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
            return True
        if isinstance(seen, MaxRetryError) and seen.reason is not None:
            seen = seen.reason
            continue
        seen = seen.__cause__ or seen.__context__
    return False


def _reason(exc: BaseException) -> str:
    if isinstance(exc, MaxRetryError) and exc.reason is not None:
        return _reason(exc.reason)
    if isinstance(exc, ProtocolError) and exc.args and len(exc.args) > 1:
        return str(exc.args[1])
    return str(exc) or type(exc).__name__


def _ssl_reason(exc: BaseException) -> str | None:
    """OpenSSL's reason code of the TLS failure behind `exc`, if there is one."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, ssl.SSLError):
            return current.reason
        todo += [a for a in current.args if isinstance(a, BaseException)]
        todo += [e for e in (current.__cause__, current.__context__) if e is not None]
    return None
