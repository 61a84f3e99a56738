"""The HTTP transport under both SDKs: a whole-call deadline and a reply size cap.

``agent.timeout_s`` bounds a whole :meth:`complete` call: connect, every read and write, the
SDK's own retries and their backoff sleeps, and a structured-output form switch. The SDKs only
bound each socket operation, so a server sending one byte a second would never time out. Here:

- :func:`call_scope` opens a deadline for the calling thread (a ``ContextVar``);
- the network backend under the connection pool clamps the timeout of every socket
  operation (connect, TLS handshake, read, write) to the time left, so a trickling or stalled
  server is cut at the deadline and its connection is closed; no thread is involved;
- before the SDK sleeps for a retry, the transport tells it not to (``x-should-retry: false``,
  which both SDKs obey) when the sleep would pass the deadline; after a connection failure
  it raises a stop error the SDKs pass through without retrying;
- every reply is read through a counter that stops at ``max_reply_bytes`` (``Content-Length``
  larger than the cap is refused before reading), with ``Accept-Encoding: identity`` so the
  bytes counted are the bytes parsed.

Stops (deadline, too large, no time for a retry) are raised as the SDK's own exception type
built by the client's ``stop_error`` factory: an ``OpenAIError`` / ``AnthropicError`` that is no
``APIConnectionError``, which both SDKs re-raise at once instead of retrying.

Environment proxies (``HTTPS_PROXY``, ``HTTP_PROXY``, ``NO_PROXY``) are honoured, as the
SDKs' default client does.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import ssl
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Literal

import httpcore2
import httpx2

__all__ = [
    "DEFAULT_MAX_REPLY_BYTES",
    "CallScope",
    "DeadlineTransport",
    "Stop",
    "call_scope",
    "http_client",
]

DEFAULT_MAX_REPLY_BYTES = 262_144

# What the SDKs retry (both SDKs, status codes), and their backoff without retry-after.
_RETRYABLE = frozenset({408, 409, 429})
_INITIAL_RETRY_DELAY = 0.5
_MAX_RETRY_DELAY = 8.0

StopKind = Literal["deadline", "too_large", "connection"]


@dataclass(frozen=True)
class Stop:
    """Why the transport ended a call; the client maps ``kind`` to an ``LLMError``."""

    kind: StopKind
    message: str
    fix: str


@dataclass
class CallScope:
    """One :meth:`complete` call: its deadline and the request bodies it sent."""

    timeout_s: float
    deadline: float = 0.0
    bodies: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.deadline = time.monotonic() + self.timeout_s

    def left(self) -> float:
        """Seconds left before the deadline (negative once passed)."""
        return self.deadline - time.monotonic()

    @property
    def last_body(self) -> dict[str, Any] | None:
        """The JSON body of the last request sent in this call."""
        return self.bodies[-1] if self.bodies else None

    def deadline_stop(self) -> Stop:
        t = f"{self.timeout_s:g}"
        return Stop(
            "deadline",
            f"no complete reply within the {t} s deadline (agent.timeout_s={t})",
            f"raise agent.timeout_s (now {t} s) or use a faster model or server.",
        )


_SCOPE: ContextVar[CallScope | None] = ContextVar("hpo_llm_call_scope", default=None)


@contextlib.contextmanager
def call_scope(timeout_s: float) -> Iterator[CallScope]:
    """Bound every request made by this thread inside the block by one deadline."""
    scope = CallScope(timeout_s)
    token = _SCOPE.set(scope)
    try:
        yield scope
    finally:
        _SCOPE.reset(token)


# --------------------------------------------------------------------------------------------
# Network backend: every socket operation waits at most until the deadline


class _DeadlinePassed(httpcore2.TimeoutException):
    """A socket operation reached the call's deadline."""


def _bounded(timeout: float | None) -> tuple[float | None, bool]:
    """``timeout`` clamped to the time left; True when the deadline is the binding limit."""
    scope = _SCOPE.get()
    if scope is None:
        return timeout, False
    left = scope.left()
    if left <= 0:
        raise _DeadlinePassed("deadline passed")
    if timeout is None or left < timeout:
        return left, True
    return timeout, False


class _DeadlineStream(httpcore2.NetworkStream):
    def __init__(self, inner: httpcore2.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        bound, by_deadline = _bounded(timeout)
        try:
            return self._inner.read(max_bytes, bound)
        except httpcore2.TimeoutException:
            if by_deadline:
                raise _DeadlinePassed("deadline passed while reading") from None
            raise

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        bound, by_deadline = _bounded(timeout)
        try:
            self._inner.write(buffer, bound)
        except httpcore2.TimeoutException:
            if by_deadline:
                raise _DeadlinePassed("deadline passed while writing") from None
            raise

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore2.NetworkStream:
        bound, _ = _bounded(timeout)
        return _DeadlineStream(self._inner.start_tls(ssl_context, server_hostname, bound))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _DeadlineBackend(httpcore2.NetworkBackend):
    def __init__(self) -> None:
        self._inner = httpcore2.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.NetworkStream:
        bound, by_deadline = _bounded(timeout)
        try:
            stream = self._inner.connect_tcp(host, port, bound, local_address, socket_options)
        except httpcore2.TimeoutException:
            if by_deadline:
                raise _DeadlinePassed("deadline passed while connecting") from None
            raise
        return _DeadlineStream(stream)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore2.NetworkStream:
        bound, _ = _bounded(timeout)
        return _DeadlineStream(self._inner.connect_unix_socket(path, bound, socket_options))

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


# --------------------------------------------------------------------------------------------
# httpcore -> httpx exceptions (what the SDKs classify: timeouts, connection errors)

_EXC_MAP: dict[type[Exception], type[httpx2.HTTPError]] = {
    httpcore2.TimeoutException: httpx2.TimeoutException,
    httpcore2.ConnectTimeout: httpx2.ConnectTimeout,
    httpcore2.ReadTimeout: httpx2.ReadTimeout,
    httpcore2.WriteTimeout: httpx2.WriteTimeout,
    httpcore2.PoolTimeout: httpx2.PoolTimeout,
    httpcore2.NetworkError: httpx2.NetworkError,
    httpcore2.ConnectError: httpx2.ConnectError,
    httpcore2.ReadError: httpx2.ReadError,
    httpcore2.WriteError: httpx2.WriteError,
    httpcore2.ProxyError: httpx2.ProxyError,
    httpcore2.ProtocolError: httpx2.ProtocolError,
    httpcore2.LocalProtocolError: httpx2.LocalProtocolError,
    httpcore2.RemoteProtocolError: httpx2.RemoteProtocolError,
}


def _as_httpx(exc: Exception) -> Exception:
    for cls in type(exc).__mro__:
        target = _EXC_MAP.get(cls)
        if target is not None:
            return target(str(exc) or type(exc).__name__)
    return exc


def _backoff(retries_taken: int) -> float:
    """The SDKs' longest backoff before retry ``retries_taken + 1`` (their jitter only
    shortens it)."""
    return min(_INITIAL_RETRY_DELAY * 2.0 ** min(retries_taken, 30), _MAX_RETRY_DELAY)


def _retry_after(headers: httpx2.Headers) -> float | None:
    """The server's requested delay in seconds (``retry-after-ms``, ``retry-after``)."""
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return float(value) / divisor
        except ValueError:
            continue
    value = headers.get("retry-after")
    if value:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return when.timestamp() - time.time()
    return None


class _ReplyStream(httpx2.SyncByteStream):
    """The response body, counted against the cap and checked against the deadline."""

    def __init__(
        self,
        inner: Iterable[bytes],
        *,
        cap: int,
        scope: CallScope | None,
        stop_error: Callable[[Stop], Exception],
    ) -> None:
        self._inner = inner
        self._cap = cap
        self._scope = scope
        self._stop_error = stop_error
        self._seen = 0

    def __iter__(self) -> Iterator[bytes]:
        try:
            for chunk in self._inner:
                self._seen += len(chunk)
                if self._seen > self._cap:
                    self.close()
                    raise self._stop_error(_too_large(self._cap, f"more than {self._cap}"))
                if self._scope is not None and self._scope.left() <= 0:
                    self.close()
                    raise self._stop_error(self._scope.deadline_stop())
                yield chunk
        except _DeadlinePassed:
            assert self._scope is not None
            raise self._stop_error(self._scope.deadline_stop()) from None
        except httpcore2.TimeoutException as exc:
            raise _as_httpx(exc) from exc
        except (httpcore2.NetworkError, httpcore2.ProtocolError, httpcore2.ProxyError) as exc:
            raise _as_httpx(exc) from exc

    def close(self) -> None:
        close = getattr(self._inner, "close", None)
        if close is not None:
            close()


def _too_large(cap: int, size: str) -> Stop:
    return Stop(
        "too_large",
        f"the reply is larger than agent.max_reply_bytes={cap} ({size} bytes): reading stopped",
        f"raise agent.max_reply_bytes (now {cap}) or lower agent.max_tokens.",
    )


class DeadlineTransport(httpx2.BaseTransport):
    """An ``httpx2`` transport enforcing the call deadline and the reply size cap.

    Args:
        stop_error: Builds the SDK exception raised for a :class:`Stop` (never retried by
            the SDK).
        max_reply_bytes: Bytes read per reply before :class:`Stop` ``too_large``.
        max_retries: The SDK's ``max_retries`` (to know whether it would sleep and retry).
        no_retry: ``(status, body) -> True`` for an error reply the SDK must not retry (a
            deterministic rejection answered with a 5xx, e.g. an unsupported
            ``response_format``).
    """

    def __init__(
        self,
        *,
        stop_error: Callable[[Stop], Exception],
        max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES,
        max_retries: int = 2,
        no_retry: Callable[[int, bytes], bool] | None = None,
    ) -> None:
        self._stop_error = stop_error
        self._cap = int(max_reply_bytes)
        self._max_retries = int(max_retries)
        self._no_retry = no_retry
        self._backend = _DeadlineBackend()
        self._ssl = httpx2.create_ssl_context()
        self._proxies = urllib.request.getproxies_environment()
        self._lock = threading.Lock()
        self._pools: dict[str, httpcore2.ConnectionPool] = {}

    # -- pools (direct, or one per environment proxy) ----------------------------------------
    def _pool_for(self, url: httpx2.URL) -> httpcore2.ConnectionPool:
        proxy = self._proxies.get(url.scheme)
        if proxy and (_is_loopback(url.host) or urllib.request.proxy_bypass(url.host)):
            proxy = None  # a proxy cannot reach this machine's own servers
        key = proxy or ""
        with self._lock:
            pool = self._pools.get(key)
            if pool is None:
                pool = self._pools[key] = self._new_pool(proxy)
            return pool

    def _new_pool(self, proxy: str | None) -> httpcore2.ConnectionPool:
        if not proxy:
            return httpcore2.ConnectionPool(
                ssl_context=self._ssl, network_backend=self._backend, keepalive_expiry=30.0
            )
        spec = httpx2.Proxy(url=proxy)
        return httpcore2.HTTPProxy(
            proxy_url=httpcore2.URL(
                scheme=spec.url.raw_scheme,
                host=spec.url.raw_host,
                port=spec.url.port,
                target=spec.url.raw_path,
            ),
            proxy_auth=spec.raw_auth,
            proxy_headers=spec.headers.raw,
            ssl_context=self._ssl,
            network_backend=self._backend,
            keepalive_expiry=30.0,
        )

    # -- one HTTP exchange ---------------------------------------------------------------
    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        scope = _SCOPE.get()
        if scope is not None:
            left = scope.left()
            if left <= 0:
                raise self._stop_error(scope.deadline_stop())
            timeouts = dict(request.extensions.get("timeout") or {})
            request.extensions["timeout"] = {
                k: left if timeouts.get(k) is None else min(float(timeouts[k]), left)
                for k in ("connect", "read", "write", "pool")
            }
            _record_body(scope, request)
        request.headers["Accept-Encoding"] = "identity"
        core = httpcore2.Request(
            method=request.method,
            url=httpcore2.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        retries_taken = _int(request.headers.get("x-stainless-retry-count"))
        may_retry = retries_taken < self._max_retries
        try:
            resp = self._pool_for(request.url).handle_request(core)
        except _DeadlinePassed:
            assert scope is not None
            raise self._stop_error(scope.deadline_stop()) from None
        except Exception as exc:
            mapped = _as_httpx(exc)
            if mapped is exc:
                raise
            if scope is not None and may_retry and _backoff(retries_taken) >= scope.left():
                what = "timed out" if isinstance(mapped, httpx2.TimeoutException) else "failed"
                raise self._stop_error(Stop(
                    "connection",
                    f"the request {what} ({exc or type(exc).__name__}) and no time is left "
                    f"for a retry within agent.timeout_s={scope.timeout_s:g}",
                    "check that the server is up and reachable at agent.base_url, or raise "
                    "agent.timeout_s.",
                )) from None
            raise mapped from exc

        length = _int(dict(_decoded(resp.headers)).get("content-length"), default=-1)
        if length > self._cap:
            resp.close()
            raise self._stop_error(_too_large(self._cap, str(length)))
        assert isinstance(resp.stream, Iterable)
        response = httpx2.Response(
            status_code=resp.status,
            headers=resp.headers,
            stream=_ReplyStream(resp.stream, cap=self._cap, scope=scope,
                                stop_error=self._stop_error),
            extensions=resp.extensions,
        )
        if may_retry and self._sdk_would_retry(response) and (
            self._deterministic(response) or self._no_time_for(response, retries_taken, scope)
        ):
            response.headers["x-should-retry"] = "false"
        return response

    @staticmethod
    def _sdk_would_retry(response: httpx2.Response) -> bool:
        flag = response.headers.get("x-should-retry")
        if flag is not None:
            return flag == "true"
        return response.status_code in _RETRYABLE or response.status_code >= 500

    def _deterministic(self, response: httpx2.Response) -> bool:
        if self._no_retry is None or response.status_code < 500:
            return False
        return self._no_retry(response.status_code, response.read())

    @staticmethod
    def _no_time_for(
        response: httpx2.Response, retries_taken: int, scope: CallScope | None
    ) -> bool:
        if scope is None:
            return False
        delay = _retry_after(response.headers)
        if delay is None or delay <= 0:
            delay = _backoff(retries_taken)
        return delay >= scope.left()

    def close(self) -> None:
        with self._lock:
            pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.close()


def _is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _decoded(headers: Any) -> Iterator[tuple[str, str]]:
    for name, value in headers:
        k = name.decode("latin-1") if isinstance(name, bytes) else str(name)
        v = value.decode("latin-1") if isinstance(value, bytes) else str(value)
        yield k.lower(), v


def _record_body(scope: CallScope, request: httpx2.Request) -> None:
    """Keep the exact JSON body sent (headers never: they hold the key)."""
    try:
        content = request.content
    except httpx2.RequestNotRead:
        return
    if not content:
        return
    try:
        body = json.loads(content)
    except ValueError:
        return
    if isinstance(body, dict):
        scope.bodies.append(body)


def http_client(
    *,
    timeout_s: float,
    max_retries: int,
    max_reply_bytes: int,
    stop_error: Callable[[Stop], Exception],
    no_retry: Callable[[int, bytes], bool] | None = None,
) -> httpx2.Client:
    """An ``httpx2.Client`` over :class:`DeadlineTransport`, for an SDK's ``http_client=``."""
    transport = DeadlineTransport(
        stop_error=stop_error,
        max_reply_bytes=max_reply_bytes,
        max_retries=max_retries,
        no_retry=no_retry,
    )
    return httpx2.Client(transport=transport, timeout=float(timeout_s))
