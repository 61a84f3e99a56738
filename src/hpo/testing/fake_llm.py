"""A loopback fake LLM server speaking the OpenAI and Anthropic wire protocols.

Shipped in the package because tests and benchmarks both use it: the real SDK clients talk to it
over HTTP on 127.0.0.1, so retries, timeouts, headers and error mapping are exercised for real.

Example:
    >>> with FakeLLMServer(seed=0) as server:  # doctest: +SKIP
    ...     client = OpenAIClient(model="gpt-4o-mini", api_key="k",
    ...                           base_url=server.openai_base_url)
    ...     server.script([FakeReply.rate_limited(), {"answer": 42}])
    ...     client.complete([Message("user", "hi")], Answer)

Scripting: :meth:`FakeLLMServer.script` queues behaviours, one per request; when the queue is
empty :attr:`FakeLLMServer.responder` decides (by default :func:`random_proposer`). A behaviour
is a ``str`` (reply text), a ``dict`` (structured reply: a forced Anthropic tool call, or the
OpenAI message content), a :class:`FakeReply`, or a callable taking the
:class:`RecordedRequest` and returning one of those (``None`` falls back to the random
proposer).
"""

from __future__ import annotations

import collections
import contextlib
import copy
import json
import logging
import math
import random
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

__all__ = [
    "FakeLLMServer",
    "FakeReply",
    "RecordedRequest",
    "Responder",
    "fill_from_schema",
    "random_proposer",
    "sample_search_space",
]

logger = logging.getLogger(__name__)

_SECRET_HEADERS = ("authorization", "x-api-key", "api-key", "x-goog-api-key")
_SEARCH_SPACE = re.compile(r"<search_space>(.*?)</search_space>", re.DOTALL)
_N_PROPOSALS = re.compile(r"<n_proposals>\s*(\d+)\s*</n_proposals>")


@dataclass(frozen=True)
class RecordedRequest:
    """One request the server received.

    Attributes:
        kind: ``"openai"`` (chat completions) or ``"anthropic"`` (messages).
        path: The request path.
        headers: Request headers, lower-case names, raw (auth headers included; see
            :meth:`redacted`).
        body: The decoded JSON body (``{}`` when it was not JSON).
        system: The system text (OpenAI system/developer messages, Anthropic ``system``).
        messages_text: The text of all user/assistant messages, joined by blank lines.
        last_user_text: The text of the last user message.
        schema: The JSON schema the client asked for (OpenAI ``response_format.json_schema``
            or the forced Anthropic tool's ``input_schema``), if any.
        tool_name: The name of the forced Anthropic tool, if any.
        received_at: ``time.time()`` at arrival.
    """

    kind: Literal["openai", "anthropic"]
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    system: str = ""
    messages_text: str = ""
    last_user_text: str = ""
    schema: dict[str, Any] | None = None
    tool_name: str | None = None
    received_at: float = 0.0

    @property
    def model(self) -> str:
        """The model the client asked for."""
        return str(self.body.get("model", ""))

    @property
    def api_key(self) -> str | None:
        """The key the client sent (``x-api-key`` or ``Authorization: Bearer``)."""
        if "x-api-key" in self.headers:
            return self.headers["x-api-key"]
        auth = self.headers.get("authorization", "")
        return auth[7:] if auth.lower().startswith("bearer ") else (auth or None)

    def redacted(self) -> RecordedRequest:
        """A copy whose secret headers read ``***``, safe to log or dump."""
        headers = {k: ("***" if k in _SECRET_HEADERS else v) for k, v in self.headers.items()}
        return replace(self, headers=headers)


@dataclass
class FakeReply:
    """How the server answers one request.

    Attributes:
        status: HTTP status. Non-2xx answers carry a provider-shaped error body.
        text: Reply text (OpenAI message content; an Anthropic text block, even when a tool
            call was forced, like a server that ignores tools).
        json_obj: Structured reply: an Anthropic ``tool_use`` input when a tool was forced
            (else its JSON text), OpenAI message content as JSON text.
        headers: Extra response headers (e.g. ``{"retry-after": "1"}``).
        delay_s: Seconds to wait before answering (longer than the client timeout = timeout).
        raw_body: Bytes or text sent verbatim as the body, e.g. a broken JSON document.
        refusal: A refusal: Anthropic ``stop_reason="refusal"``, OpenAI ``message.refusal``.
        stop_reason: Overrides the Anthropic ``stop_reason`` / OpenAI ``finish_reason``.
        usage: ``(input_tokens, output_tokens)``; estimated from the text lengths when None.
        error_message: Message of the error body for non-2xx statuses.
    """

    status: int = 200
    text: str | None = None
    json_obj: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    raw_body: str | bytes | None = None
    refusal: str | None = None
    stop_reason: str | None = None
    usage: tuple[int, int] | None = None
    error_message: str | None = None

    @classmethod
    def rate_limited(cls, retry_after_s: float = 0.01) -> FakeReply:
        """429 with ``retry-after`` (and ``retry-after-ms``, which the SDKs read first)."""
        return cls(
            status=429,
            headers={
                "retry-after": str(max(0, math.ceil(retry_after_s))),
                "retry-after-ms": str(int(retry_after_s * 1000)),
            },
            error_message="rate limit reached, slow down",
        )

    @classmethod
    def server_error(cls, status: int = 500, retry_after_s: float = 0.01) -> FakeReply:
        """A 5xx answer; ``retry-after-ms`` keeps the SDK's backoff short in tests."""
        return cls(
            status=status,
            headers={"retry-after-ms": str(int(retry_after_s * 1000))},
            error_message=f"fake upstream failure {status}",
        )

    @classmethod
    def timeout(cls, delay_s: float = 2.0) -> FakeReply:
        """An answer that arrives after ``delay_s`` (set the client timeout below it)."""
        return cls(delay_s=delay_s, text="{}")


Behaviour = str | dict[str, Any] | FakeReply | Callable[["RecordedRequest"], Any] | None
Responder = Callable[[RecordedRequest], Any]


# --------------------------------------------------------------------------------------------
# Building replies from a JSON schema and a search space


def sample_search_space(space: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """Draw one value per parameter of a search space spec.

    Args:
        space: ``{"name": {"type": "float"|"int"|"categorical", "low", "high", "log", "step",
            "choices"}}`` as the agents' prompts render it.
        rng: The random generator to draw from.

    Returns:
        ``{"name": value}``; parameters whose spec is unusable are left out.
    """
    params: dict[str, Any] = {}
    for name, spec in space.items():
        if not isinstance(spec, dict):
            continue
        kind = str(spec.get("type", "")).lower()
        try:
            if kind == "categorical" or ("choices" in spec and "low" not in spec):
                choices = list(spec.get("choices") or [])
                if choices:
                    params[name] = rng.choice(choices)
                continue
            low, high = spec["low"], spec["high"]
            step, log = spec.get("step"), bool(spec.get("log", False))
            if kind == "int":
                low, high = int(low), int(high)
                if log and low > 0:
                    value = round(math.exp(rng.uniform(math.log(low), math.log(high))))
                    params[name] = min(max(value, low), high)
                else:
                    istep = max(int(step or 1), 1)
                    params[name] = low + istep * rng.randint(0, (high - low) // istep)
            else:
                low, high = float(low), float(high)
                if step:
                    n = math.floor((high - low) / float(step) + 1e-9)
                    params[name] = round(low + float(step) * rng.randint(0, n), 12)
                elif log and low > 0:
                    params[name] = math.exp(rng.uniform(math.log(low), math.log(high)))
                else:
                    params[name] = rng.uniform(low, high)
        except (KeyError, TypeError, ValueError):
            logger.debug("fake LLM: cannot sample parameter %r from %r", name, spec)
    return params


def _resolve(schema: Any, root: dict[str, Any]) -> dict[str, Any]:
    seen = 0
    while isinstance(schema, dict) and "$ref" in schema and seen < 32:
        ref = str(schema["$ref"])
        node: Any = root
        if ref.startswith("#/"):
            for part in ref[2:].split("/"):
                node = node.get(part, {}) if isinstance(node, dict) else {}
        else:
            node = {}
        extra = {k: v for k, v in schema.items() if k != "$ref"}
        schema = {**node, **extra} if isinstance(node, dict) else extra
        seen += 1
    return schema if isinstance(schema, dict) else {}


_TEXT_BY_NAME = {
    "rationale": "fake rationale: sampled at random inside the search space",
    "diagnosis": "fake diagnosis: the search is progressing; keep exploring",
    "reason": "fake reason",
    "summary": "fake summary of the history",
}


class _Filler:
    def __init__(
        self,
        root: dict[str, Any],
        *,
        rng: random.Random,
        space: dict[str, Any] | None,
        n_proposals: int,
    ) -> None:
        self.root = root
        self.rng = rng
        self.space = space
        self.n_proposals = n_proposals

    def params(self) -> dict[str, Any]:
        return sample_search_space(self.space or {}, self.rng)

    def fill(self, schema: Any, name: str = "", depth: int = 0) -> Any:
        s = _resolve(schema, self.root)
        if depth > 12:
            return None
        for key in ("anyOf", "oneOf"):
            if key in s:
                options = [_resolve(o, self.root) for o in s[key]]
                non_null = [o for o in options if o.get("type") != "null"]
                if "default" in s and name not in ("proposals", "params"):
                    return copy.deepcopy(s["default"])
                return self.fill(non_null[0] if non_null else {}, name, depth + 1)
        if "allOf" in s:
            merged: dict[str, Any] = {}
            for part in s["allOf"]:
                merged.update(_resolve(part, self.root))
            merged.update({k: v for k, v in s.items() if k != "allOf"})
            return self.fill(merged, name, depth + 1)
        if "const" in s:
            return s["const"]
        if s.get("enum"):
            return s["enum"][0]
        kind = s.get("type")
        if isinstance(kind, list):
            kind = next((t for t in kind if t != "null"), "null")
        if kind is None:
            if "properties" in s or "additionalProperties" in s:
                kind = "object"
            elif "items" in s:
                kind = "array"
        if name == "params" and self.space is not None and kind in ("object", None):
            return self.params()
        if name == "proposals" and kind == "array":
            return self.array(s, name, depth, self.n_proposals)
        if "default" in s:
            return copy.deepcopy(s["default"])
        if kind == "object":
            return {
                prop: self.fill(sub, prop, depth + 1)
                for prop, sub in (s.get("properties") or {}).items()
            }
        if kind == "array":
            return self.array(s, name, depth, 1)
        if kind == "string":
            return self.string(s, name)
        if kind == "integer":
            return int(self.number(s, integer=True))
        if kind == "number":
            return self.number(s, integer=False)
        if kind == "boolean":
            return True
        if kind == "null":
            return None
        return f"fake {name or 'value'}"

    def array(self, s: dict[str, Any], name: str, depth: int, want: int) -> list[Any]:
        lo = int(s.get("minItems", 0))
        hi = s.get("maxItems")
        n = max(want, lo)
        if hi is not None:
            n = min(n, int(hi))
        items = s.get("items", {})
        out = []
        for i in range(n):
            value = self.fill(items, name.rstrip("s") if name else "item", depth + 1)
            if isinstance(value, str) and n > 1:
                value = f"{value} {i + 1}"
            out.append(value)
        return out

    def string(self, s: dict[str, Any], name: str) -> str:
        text = _TEXT_BY_NAME.get(name) or f"fake {name or 'text'}"
        min_len = int(s.get("minLength", 0))
        if len(text) < min_len:
            text = text + "." * (min_len - len(text))
        if "maxLength" in s:
            text = text[: int(s["maxLength"])]
        return text

    def number(self, s: dict[str, Any], *, integer: bool) -> float:
        lo = s.get("minimum")
        hi = s.get("maximum")
        if lo is None and "exclusiveMinimum" in s:
            lo = s["exclusiveMinimum"] + (1 if integer else 1e-6)
        if hi is None and "exclusiveMaximum" in s:
            hi = s["exclusiveMaximum"] - (1 if integer else 1e-6)
        if lo is not None and hi is not None:
            value = (lo + hi) / 2
            return math.ceil(value) if integer and math.ceil(value) <= hi else value
        if lo is not None:
            return lo + 1
        if hi is not None:
            return min(hi, 1) if integer else min(hi, 0.5)
        return 1 if integer else 0.5


def fill_from_schema(
    schema: dict[str, Any],
    *,
    rng: random.Random | None = None,
    search_space: dict[str, Any] | None = None,
    n_proposals: int = 1,
) -> Any:
    """Build a plausible value that satisfies a simple JSON schema (pydantic-generated).

    Strings get ``"fake <field>"``, numbers the middle of their bounds, enums their first value,
    arrays one item (``proposals``: ``n_proposals`` items), and any object named ``params`` a
    random draw from ``search_space``.

    Args:
        schema: The JSON schema (``$defs``/``$ref`` resolved against it).
        rng: Random generator for parameter draws.
        search_space: The search space spec, see :func:`sample_search_space`.
        n_proposals: Length of a ``proposals`` array.
    """
    filler = _Filler(
        schema, rng=rng or random.Random(0), space=search_space, n_proposals=n_proposals
    )
    return filler.fill(schema)


class _RandomProposer:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.lock = threading.Lock()

    def __call__(self, req: RecordedRequest) -> dict[str, Any]:
        text = req.last_user_text or req.messages_text
        space: dict[str, Any] | None = None
        match = _SEARCH_SPACE.search(text)
        if match:
            try:
                decoded = json.loads(match.group(1))
                space = decoded if isinstance(decoded, dict) else None
            except ValueError:
                logger.debug("fake LLM: <search_space> block is not JSON")
        n_match = _N_PROPOSALS.search(text)
        k = max(int(n_match.group(1)), 1) if n_match else 1
        with self.lock:
            if req.schema:
                value = fill_from_schema(
                    req.schema, rng=self.rng, search_space=space or {}, n_proposals=k
                )
                if isinstance(value, dict):
                    return value
            return {
                "proposals": [
                    {
                        "params": sample_search_space(space or {}, self.rng),
                        "rationale": _TEXT_BY_NAME["rationale"],
                    }
                    for _ in range(k)
                ],
                "diagnosis": _TEXT_BY_NAME["diagnosis"],
                "step": "small",
            }


def random_proposer(seed: int = 0) -> Responder:
    """A responder that proposes random points of the prompt's search space.

    It reads ``<search_space>{json}</search_space>`` and ``<n_proposals>k</n_proposals>`` from
    the last user message and answers ``{"proposals": [{"params", "rationale"} x k],
    "diagnosis", "step": "small"}``; when the request carries a JSON schema (any reply model,
    e.g. an analyst's), the reply is built from that schema instead (see
    :func:`fill_from_schema`). Thread-safe and deterministic for a given request order.

    Args:
        seed: Seed of the generator.
    """
    return _RandomProposer(seed)


# --------------------------------------------------------------------------------------------
# Wire protocol


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif isinstance(part, str):
                parts.append(part)
        return "\n".join(parts)
    return ""


def _record(
    kind: Literal["openai", "anthropic"], path: str, headers: dict[str, str], body: dict[str, Any]
) -> RecordedRequest:
    system_parts: list[str] = []
    convo: list[str] = []
    last_user = ""
    for m in body.get("messages") or []:
        if not isinstance(m, dict):
            continue
        role, text = m.get("role"), _text_of(m.get("content"))
        if role in ("system", "developer"):
            system_parts.append(text)
        else:
            convo.append(text)
            if role == "user":
                last_user = text
    schema: dict[str, Any] | None = None
    tool_name: str | None = None
    if kind == "anthropic":
        system_parts.insert(0, _text_of(body.get("system")))
        choice = body.get("tool_choice") or {"type": "auto"}
        tools = [t for t in body.get("tools") or [] if isinstance(t, dict)]
        ctype = choice.get("type") if isinstance(choice, dict) else None
        picked: dict[str, Any] = {}
        if ctype == "tool":
            picked = next((t for t in tools if t.get("name") == choice.get("name")), {})
        elif ctype in ("any", "auto") and tools:
            # a cooperative model answers through the first client tool it was offered (server
            # tools such as web_search have no input_schema: the fake does not run them)
            picked = next((t for t in tools if "input_schema" in t), {})
        if picked:
            tool_name = str(picked.get("name"))
            schema = picked.get("input_schema")
    else:
        fmt = body.get("response_format") or {}
        if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
            schema = (fmt.get("json_schema") or {}).get("schema")
    return RecordedRequest(
        kind=kind,
        path=path,
        headers=headers,
        body=body,
        system="\n".join(p for p in system_parts if p),
        messages_text="\n\n".join(convo),
        last_user_text=last_user,
        schema=schema if isinstance(schema, dict) else None,
        tool_name=tool_name,
        received_at=time.time(),
    )


def _estimate_tokens(text: str) -> int:
    return max(1, len(text) // 4)


_ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


def _error_body(kind: str, status: int, message: str) -> dict[str, Any]:
    if kind == "anthropic":
        etype = _ANTHROPIC_ERROR_TYPES.get(status, "api_error")
        return {"type": "error", "error": {"type": etype, "message": message}}
    etype = {429: "rate_limit_exceeded", 401: "invalid_request_error"}.get(
        status, "server_error" if status >= 500 else "invalid_request_error"
    )
    return {"error": {"message": message, "type": etype, "param": None, "code": None}}


def _success_body(req: RecordedRequest, reply: FakeReply) -> dict[str, Any]:
    model = req.model or "fake-model"
    prompt_text = req.system + req.messages_text
    if req.kind == "anthropic":
        blocks: list[dict[str, Any]]
        if reply.refusal is not None:
            blocks = [{"type": "text", "text": reply.refusal}]
            stop = "refusal"
        elif reply.text is not None:
            blocks = [{"type": "text", "text": reply.text}]
            stop = "end_turn"
        elif reply.json_obj is not None and req.tool_name:
            blocks = [
                {
                    "type": "tool_use",
                    "id": f"toolu_{uuid.uuid4().hex[:24]}",
                    "name": req.tool_name,
                    "input": reply.json_obj,
                }
            ]
            stop = "tool_use"
        else:
            text = json.dumps(reply.json_obj) if reply.json_obj is not None else ""
            blocks = [{"type": "text", "text": text}]
            stop = "end_turn"
        out_text = json.dumps(blocks)
        tin, tout = reply.usage or (_estimate_tokens(prompt_text), _estimate_tokens(out_text))
        return {
            "id": f"msg_{uuid.uuid4().hex[:24]}",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": blocks,
            "stop_reason": reply.stop_reason or stop,
            "stop_sequence": None,
            "usage": {"input_tokens": tin, "output_tokens": tout},
        }
    content: str | None
    if reply.refusal is not None:
        content = None
    elif reply.text is not None:
        content = reply.text
    else:
        content = json.dumps(reply.json_obj) if reply.json_obj is not None else ""
    tin, tout = reply.usage or (
        _estimate_tokens(prompt_text),
        _estimate_tokens(content or reply.refusal or ""),
    )
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": reply.refusal},
                "finish_reason": reply.stop_reason or "stop",
                "logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": tin, "completion_tokens": tout, "total_tokens": tin + tout},
    }


def _as_reply(value: Any) -> FakeReply | None:
    if value is None:
        return None
    if isinstance(value, FakeReply):
        return value
    if isinstance(value, str):
        return FakeReply(text=value)
    if isinstance(value, dict | list):
        return FakeReply(json_obj=value)
    raise TypeError(
        f"fake LLM behaviour {value!r} is not a str, dict, FakeReply or callable: return one "
        "of those."
    )


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("fake LLM %s: " + format, self.client_address[0], *args)

    def handle(self) -> None:
        self.server.owner._track(self.connection, add=True)
        try:
            super().handle()
        except (BrokenPipeError, ConnectionResetError, TimeoutError, OSError):
            pass  # the client gave up (timeout) or the server is stopping
        finally:
            self.server.owner._track(self.connection, add=False)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        sent = {k.lower() for k in (headers or {})}
        if "content-type" not in sent:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("request-id", f"req_{uuid.uuid4().hex[:16]}")
        self.send_header("x-request-id", f"req_{uuid.uuid4().hex[:16]}")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def do_GET(self) -> None:
        if self.path.rstrip("/").endswith("/models"):
            body = {"object": "list", "data": [{"id": "fake-model", "object": "model"}]}
            self._send(200, json.dumps(body).encode())
        else:
            self._send(404, json.dumps(_error_body("openai", 404, "not found")).encode())

    def do_POST(self) -> None:
        raw = self._read_body()
        path = self.path.split("?", 1)[0].rstrip("/")
        kind: Literal["openai", "anthropic"]
        if path.endswith("/chat/completions"):
            kind = "openai"
        elif path.endswith("/messages"):
            kind = "anthropic"
        else:
            self._send(404, json.dumps(_error_body("openai", 404, f"no route {path}")).encode())
            return
        try:
            body = json.loads(raw or b"{}")
            if not isinstance(body, dict):
                body = {}
        except ValueError:
            body = {}
        headers = {k.lower(): v for k, v in self.headers.items()}
        req = _record(kind, path, headers, body)
        owner = self.server.owner
        try:
            reply = owner._behaviour_for(req)
        except Exception as exc:  # a broken test responder becomes a 500, not a hung client
            logger.exception("fake LLM responder failed")
            reply = FakeReply(status=500, error_message=f"fake responder failed: {exc}")
        if reply.delay_s > 0 and owner._stopping.wait(reply.delay_s):
            return  # stopping: drop the connection without an answer
        if reply.raw_body is not None:
            data = reply.raw_body.encode() if isinstance(reply.raw_body, str) else reply.raw_body
        elif reply.status >= 400:
            msg = reply.error_message or f"fake error {reply.status}"
            data = json.dumps(_error_body(kind, reply.status, msg)).encode()
        else:
            data = json.dumps(_success_body(req, reply)).encode()
        self._send(reply.status, data, reply.headers)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: FakeLLMServer


class FakeLLMServer:
    """A real HTTP server on 127.0.0.1 that imitates the OpenAI and Anthropic APIs.

    Routes: ``POST /v1/chat/completions`` (OpenAI) and ``POST /v1/messages`` (Anthropic);
    ``GET /v1/models`` lists one model. Every request is recorded in :attr:`requests`.
    Thread-safe; use as a context manager, or call :meth:`start` / :meth:`stop`.

    Args:
        responder: Default behaviour when the script queue is empty; ``None`` means
            :func:`random_proposer` with ``seed``.
        seed: Seed of the default random proposer.
        host: Interface to bind (loopback by default).
        port: Port to bind; 0 picks a free one.
    """

    def __init__(
        self,
        *,
        responder: Responder | None = None,
        seed: int = 0,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self._host = host
        self._port = port
        self._seed = seed
        self._default = random_proposer(seed)
        self.responder: Responder = responder or self._default
        self._lock = threading.Lock()
        self._queue: collections.deque[Behaviour] = collections.deque()
        self._requests: list[RecordedRequest] = []
        self._conns: set[socket.socket] = set()
        self._stopping = threading.Event()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> FakeLLMServer:
        """Bind and serve in a background thread; returns ``self``."""
        if self._httpd is not None:
            return self
        self._stopping.clear()
        httpd = _HTTPServer((self._host, self._port), _Handler)
        httpd.owner = self
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            daemon=True,
            name=f"fake-llm-{httpd.server_address[1]}",
        )
        self._thread.start()
        logger.debug("fake LLM serving at %s", self.url)
        return self

    def stop(self) -> None:
        """Stop serving, drop open connections and release the port."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._stopping.set()
        httpd.shutdown()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeLLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._conns.add(conn)
            else:
                self._conns.discard(conn)

    # -- addresses --------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:54321``."""
        if self._httpd is None:
            raise RuntimeError("FakeLLMServer is not running: call start() or use `with`.")
        host, port = self._httpd.server_address[:2]
        host = host.decode() if isinstance(host, bytes) else str(host)
        return f"http://{host}:{port}"

    @property
    def openai_base_url(self) -> str:
        """Base URL for OpenAI-compatible clients (``{url}/v1``)."""
        return f"{self.url}/v1"

    @property
    def anthropic_base_url(self) -> str:
        """Base URL for the Anthropic client (the SDK appends ``/v1/messages``)."""
        return self.url

    # -- scripting --------------------------------------------------------------------------
    def script(self, behaviours: Iterable[Behaviour]) -> None:
        """Queue behaviours, consumed one per request, before the responder is asked."""
        with self._lock:
            self._queue.extend(behaviours)

    def _behaviour_for(self, req: RecordedRequest) -> FakeReply:
        with self._lock:
            self._requests.append(req)
            behaviour = self._queue.popleft() if self._queue else self.responder
        if callable(behaviour):
            behaviour = behaviour(req)
        reply = _as_reply(behaviour)
        if reply is None:
            reply = _as_reply(self._default(req))
        assert reply is not None
        return reply

    # -- inspection -------------------------------------------------------------------------
    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of every request received, in arrival order."""
        with self._lock:
            return list(self._requests)

    @property
    def pending(self) -> int:
        """Scripted behaviours not consumed yet."""
        with self._lock:
            return len(self._queue)

    def calls_by_kind(self) -> dict[str, int]:
        """Count requests per protocol: ``{"openai": n, "anthropic": m}``."""
        counts = {"openai": 0, "anthropic": 0}
        for req in self.requests:
            counts[req.kind] += 1
        return counts

    def reset(self) -> None:
        """Forget recorded requests and scripted behaviours; restore the default responder."""
        with self._lock:
            self._requests.clear()
            self._queue.clear()
            self.responder = self._default
