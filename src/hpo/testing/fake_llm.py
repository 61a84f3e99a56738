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
is a ``str`` (reply text), a ``dict`` (structured reply: a forced tool call, or the OpenAI
message content), a :class:`FakeReply`, or a callable taking the :class:`RecordedRequest` and
returning one of those (``None`` falls back to the random proposer).

Realism (the default stays a cooperative OpenAI/Anthropic server): ``flavor`` makes the server
behave like llama-cpp-python's (``json_schema`` rejected with HTTP 500 "Input should be 'text'
or 'json_object'", ``json_object`` + ``schema`` honoured by filling the schema, ``json_object``
alone answered with "some JSON") or like a server that ignores ``response_format`` (prose around
the JSON); ``model`` names the model every reply claims (a server's own alias);
``served_models`` lists ``GET /v1/models`` and answers 404 for any other model;
:meth:`FakeReply.trickle`, :meth:`FakeReply.stalled` and :meth:`FakeReply.oversized` send slow,
stalled and huge replies. :attr:`FakeLLMServer.active` and :attr:`FakeLLMServer.disconnects`
tell whether a client gave up on a reply. ``POST /v1/responses`` speaks OpenAI's Responses API
(web search included: the fake reports one search and answers without searching).
``POST /v1beta/models/{model}:generateContent`` speaks Gemini's native API (with the
``google_search`` tool the reply carries ``groundingMetadata`` naming two fake web sources).
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
import select
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

__all__ = [
    "FAKE_WEB_SOURCES",
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
_GEMINI_PATH = re.compile(r"/v1beta/models/([^/:]+):generateContent$")
# The web sources every grounded Gemini reply of the fake names.
FAKE_WEB_SOURCES = (
    ("https://example.org/fake-tuning-guide", "Fake tuning guide"),
    ("https://example.org/fake-learning-rate-notes", "Fake learning rate notes"),
)

Kind = Literal["openai", "anthropic", "gemini"]


@dataclass(frozen=True)
class RecordedRequest:
    """One request the server received.

    Attributes:
        kind: ``"openai"`` (chat completions, responses), ``"anthropic"`` (messages) or
            ``"gemini"`` (native ``generateContent``).
        path: The request path.
        headers: Request headers, lower-case names, raw (auth headers included; see
            :meth:`redacted`).
        body: The decoded JSON body (``{}`` when it was not JSON).
        system: The system text (OpenAI system/developer messages, Anthropic ``system``).
        messages_text: The text of all user/assistant messages, joined by blank lines.
        last_user_text: The text of the last user message.
        schema: The JSON schema the server honours for this request, if any: OpenAI
            ``response_format.json_schema`` (or ``json_object``'s ``schema`` on the
            llama-cpp-python flavor), a forced tool's ``input_schema`` / ``parameters``, the
            Responses API's ``text.format`` schema, else a schema given in the system text
            ("... matching this JSON schema:" followed by the schema, which a cooperative
            model follows).
        tool_name: The name of the tool the reply comes through (Anthropic tool, OpenAI
            function), if any.
        received_at: ``time.time()`` at arrival.
        server_tools: Server-side tools asked for (``"web_search"``).
    """

    kind: Kind
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    system: str = ""
    messages_text: str = ""
    last_user_text: str = ""
    schema: dict[str, Any] | None = None
    tool_name: str | None = None
    received_at: float = 0.0
    server_tools: tuple[str, ...] = ()

    @property
    def api(self) -> Literal["chat", "messages", "responses", "generate_content"]:
        """Which API the request used."""
        if self.kind == "anthropic":
            return "messages"
        if self.kind == "gemini":
            return "generate_content"
        return "responses" if self.path.endswith("/responses") else "chat"

    @property
    def form(self) -> str:
        """The structured-output form of the request: json_schema | json_object | tool | none."""
        if self.kind == "gemini":
            return "none"  # the schema rides in the system text
        if self.api == "responses":
            fmt = ((self.body.get("text") or {}).get("format") or {}).get("type")
            return str(fmt) if fmt in ("json_schema", "json_object") else "none"
        if self.kind == "anthropic":
            return "tool" if any("input_schema" in t for t in self.body.get("tools") or []
                                 if isinstance(t, dict)) else "none"
        fmt = self.body.get("response_format")
        if isinstance(fmt, dict) and fmt.get("type") in ("json_schema", "json_object"):
            return str(fmt["type"])
        return "tool" if self.body.get("tools") else "none"

    @property
    def model(self) -> str:
        """The model the client asked for (Gemini's native API names it in the path)."""
        found = _GEMINI_PATH.search(self.path) if self.kind == "gemini" else None
        return found.group(1) if found else str(self.body.get("model", ""))

    @property
    def api_key(self) -> str | None:
        """The key the client sent (``x-api-key``, ``x-goog-api-key`` or
        ``Authorization: Bearer``)."""
        for name in ("x-api-key", "x-goog-api-key"):
            if name in self.headers:
                return self.headers[name]
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
        model: The model the reply names (overrides the server's ``model``).
        trickle_bps: Send the body at this many bytes per second.
        stall_after: Send this many body bytes, then nothing until the client gives up (or
            the server stops).
        chunked: Send the body with ``Transfer-Encoding: chunked`` (no ``Content-Length``).
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
    model: str | None = None
    trickle_bps: float | None = None
    stall_after: int | None = None
    chunked: bool = False

    @classmethod
    def trickle(cls, bytes_per_s: float = 1.0, json_obj: Any = None) -> FakeReply:
        """A valid reply sent ``bytes_per_s`` bytes a second (headers at once)."""
        return cls(json_obj=json_obj, trickle_bps=bytes_per_s)

    @classmethod
    def stalled(cls, after_bytes: int = 0) -> FakeReply:
        """Headers and ``after_bytes`` body bytes, then silence until the client gives up."""
        return cls(stall_after=after_bytes)

    @classmethod
    def oversized(cls, n_bytes: int, *, chunked: bool = False) -> FakeReply:
        """A well-formed reply whose text is ``n_bytes`` long (``chunked``: no length)."""
        return cls(text="x" * n_bytes, chunked=chunked)

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


Flavor = Literal["openai", "llama_cpp_python", "ignores_response_format"]
_HINT = re.compile(r"JSON schema:\s*(\{.*\})\s*$", re.DOTALL)


def _hint_schema(system: str) -> dict[str, Any] | None:
    """A schema given in the system text (``... matching this JSON schema:\n{...}``)."""
    match = _HINT.search(system)
    if not match:
        return None
    try:
        value = json.loads(match.group(1))
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _picked_tool(body: dict[str, Any], kind: str) -> tuple[str | None, dict[str, Any] | None]:
    """The client tool the reply comes through, and its schema (Anthropic or OpenAI shape)."""
    choice = body.get("tool_choice") or {"type": "auto"}
    ctype = choice.get("type") if isinstance(choice, dict) else choice
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict)]
    if kind == "anthropic":
        offered = [(str(t.get("name")), t.get("input_schema")) for t in tools
                   if "input_schema" in t]
        forced = choice.get("name") if ctype == "tool" and isinstance(choice, dict) else None
    else:
        offered = [(str((t.get("function") or {}).get("name")),
                    (t.get("function") or {}).get("parameters"))
                   for t in tools if t.get("type") == "function"]
        forced = ((choice.get("function") or {}).get("name")
                  if ctype == "function" and isinstance(choice, dict) else None)
    if forced is not None:
        return next(((n, sch) for n, sch in offered if n == forced), (None, None))
    if ctype in ("any", "auto", "required") and offered:
        # a cooperative model answers through the first client tool it was offered (server
        # tools such as web_search have no schema: the fake does not run them)
        return offered[0]
    return None, None


def _record(
    kind: Kind,
    path: str,
    headers: dict[str, str],
    body: dict[str, Any],
    flavor: Flavor = "openai",
) -> RecordedRequest:
    system_parts: list[str] = []
    convo: list[str] = []
    last_user = ""
    messages = body.get("messages") or []
    if path.endswith("/responses"):
        raw_input = body.get("input")
        messages = [{"role": "user", "content": raw_input}] if isinstance(raw_input, str) else (
            raw_input or [])
        system_parts.append(_text_of(body.get("instructions")))
    if kind == "gemini":
        messages = [
            {"role": "user" if c.get("role", "user") == "user" else "assistant",
             "content": c.get("parts")}
            for c in body.get("contents") or [] if isinstance(c, dict)
        ]
        system_parts.append(_text_of((body.get("systemInstruction") or {}).get("parts")))
    for m in messages:
        if not isinstance(m, dict):
            continue
        role, text = m.get("role"), _text_of(m.get("content"))
        if role in ("system", "developer"):
            system_parts.append(text)
        else:
            convo.append(text)
            if role == "user":
                last_user = text
    if kind == "anthropic":
        system_parts.insert(0, _text_of(body.get("system")))
    system = "\n".join(p for p in system_parts if p)
    schema: Any = None
    tool_name: str | None = None
    server_tools = tuple(
        "web_search" for t in body.get("tools") or []
        if isinstance(t, dict) and (str(t.get("type", "")).startswith("web_search")
                                    or "google_search" in t or "googleSearch" in t)
    )
    if path.endswith("/responses"):
        fmt = (body.get("text") or {}).get("format") or {}
        if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
            schema = fmt.get("schema")
    elif kind != "gemini":
        tool_name, schema = _picked_tool(body, kind)
    fmt = body.get("response_format") if kind == "openai" else None
    if isinstance(fmt, dict) and flavor != "ignores_response_format" and schema is None:
        if fmt.get("type") == "json_schema" and flavor == "openai":
            schema = (fmt.get("json_schema") or {}).get("schema")
        elif fmt.get("type") == "json_object" and flavor == "llama_cpp_python":
            schema = fmt.get("schema")
    if schema is None:
        schema = _hint_schema(system)
    return RecordedRequest(
        kind=kind,
        path=path,
        headers=headers,
        body=body,
        system=system,
        messages_text="\n\n".join(convo),
        last_user_text=last_user,
        schema=schema if isinstance(schema, dict) else None,
        tool_name=tool_name,
        received_at=time.time(),
        server_tools=server_tools,
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


# google.rpc status names of Gemini's native error bodies.
_GEMINI_ERROR_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    503: "UNAVAILABLE",
}


def _error_body(kind: str, status: int, message: str) -> dict[str, Any]:
    if kind == "gemini":
        return {"error": {"code": status, "message": message,
                          "status": _GEMINI_ERROR_STATUS.get(status, "INTERNAL")}}
    if kind == "anthropic":
        etype = _ANTHROPIC_ERROR_TYPES.get(status, "api_error")
        return {"type": "error", "error": {"type": etype, "message": message}}
    etype = {429: "rate_limit_exceeded", 401: "invalid_request_error"}.get(
        status, "server_error" if status >= 500 else "invalid_request_error"
    )
    return {"error": {"message": message, "type": etype, "param": None, "code": None}}


def _responses_body(req: RecordedRequest, reply: FakeReply, model: str) -> dict[str, Any]:
    """An OpenAI Responses API reply (a web search reported when one was offered)."""
    output: list[dict[str, Any]] = []
    if req.server_tools:
        output.append({
            "type": "web_search_call",
            "id": f"ws_{uuid.uuid4().hex[:24]}",
            "status": "completed",
            "action": {"type": "search", "query": "fake search"},
        })
    if reply.refusal is not None:
        part: dict[str, Any] = {"type": "refusal", "refusal": reply.refusal}
        text = reply.refusal
    else:
        text = reply.text if reply.text is not None else (
            json.dumps(reply.json_obj) if reply.json_obj is not None else "")
        part = {"type": "output_text", "text": text, "annotations": []}
    output.append({
        "type": "message",
        "id": f"msg_{uuid.uuid4().hex[:24]}",
        "role": "assistant",
        "status": "completed",
        "content": [part],
    })
    tin, tout = reply.usage or (_estimate_tokens(req.system + req.messages_text),
                                _estimate_tokens(text))
    incomplete = reply.stop_reason == "max_output_tokens"
    return {
        "id": f"resp_{uuid.uuid4().hex[:24]}",
        "object": "response",
        "created_at": int(time.time()),
        "model": model,
        "status": "incomplete" if incomplete else "completed",
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "output": output,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": req.body.get("tools") or [],
        "usage": {
            "input_tokens": tin,
            "output_tokens": tout,
            "total_tokens": tin + tout,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0},
        },
    }


def _gemini_body(req: RecordedRequest, reply: FakeReply, model: str) -> dict[str, Any]:
    """A Gemini ``generateContent`` reply, grounded in fake web sources when
    ``google_search`` was offered."""
    text = reply.refusal if reply.refusal is not None else (
        reply.text if reply.text is not None else (
            json.dumps(reply.json_obj) if reply.json_obj is not None else ""))
    finish = reply.stop_reason or ("SAFETY" if reply.refusal is not None else "STOP")
    candidate: dict[str, Any] = {
        "content": {"role": "model", "parts": [{"text": text}]},
        "finishReason": finish,
        "index": 0,
    }
    if req.server_tools:
        candidate["groundingMetadata"] = {
            "webSearchQueries": ["fake search"],
            "groundingChunks": [{"web": {"uri": uri, "title": title}}
                                for uri, title in FAKE_WEB_SOURCES],
            "groundingSupports": [{
                "segment": {"startIndex": 0, "endIndex": min(len(text), 10), "text": text[:10]},
                "groundingChunkIndices": [0, 1],
            }],
        }
    tin, tout = reply.usage or (_estimate_tokens(req.system + req.messages_text),
                                _estimate_tokens(text))
    return {
        "candidates": [candidate],
        "usageMetadata": {"promptTokenCount": tin, "candidatesTokenCount": tout,
                          "totalTokenCount": tin + tout},
        "modelVersion": model,
        "responseId": uuid.uuid4().hex[:22],
    }


def _success_body(req: RecordedRequest, reply: FakeReply, model: str) -> dict[str, Any]:
    if req.api == "responses":
        return _responses_body(req, reply, model)
    if req.kind == "gemini":
        return _gemini_body(req, reply, model)
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
    tool_calls: list[dict[str, Any]] | None = None
    finish = "stop"
    if reply.refusal is not None:
        content = None
    elif reply.text is not None:
        content = reply.text
    elif reply.json_obj is not None and req.tool_name:
        content = None
        finish = "tool_calls"
        tool_calls = [{
            "id": f"call_{uuid.uuid4().hex[:24]}",
            "type": "function",
            "function": {"name": req.tool_name, "arguments": json.dumps(reply.json_obj)},
        }]
    else:
        content = json.dumps(reply.json_obj) if reply.json_obj is not None else ""
    tin, tout = reply.usage or (
        _estimate_tokens(prompt_text),
        _estimate_tokens(content or reply.refusal or json.dumps(tool_calls or "")),
    )
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": reply.refusal}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": reply.stop_reason or finish,
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


_LLAMA_CPP_REJECTION = (
    "1 validation error for CreateChatCompletionRequest\nresponse_format.type\n  Input should be "
    "'text' or 'json_object' [type=literal_error, input_value='json_schema', input_type=str]"
)


class _ClientGone(Exception):
    """The client closed the connection before the reply was complete."""


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
        self._send_head(status, headers, length=len(body))
        self.wfile.write(body)
        self.wfile.flush()

    def _send_head(self, status: int, headers: dict[str, str] | None, length: int | None) -> None:
        self.send_response(status)
        sent = {k.lower() for k in (headers or {})}
        if "content-type" not in sent:
            self.send_header("Content-Type", "application/json")
        if length is None:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(length))
        self.send_header("request-id", f"req_{uuid.uuid4().hex[:16]}")
        self.send_header("x-request-id", f"req_{uuid.uuid4().hex[:16]}")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.flush()

    def _client_gone(self) -> bool:
        """Whether the client closed its end (EOF or reset), without consuming data."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            if not readable:
                return False
            return self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    def _wait(self, seconds: float) -> None:
        """Wait ``seconds`` (forever for ``inf``) while watching the client and the server.

        Raises:
            _ClientGone: The client closed the connection meanwhile.
            BrokenPipeError: The server is stopping.
        """
        owner = self.server.owner
        end = time.monotonic() + seconds
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return
            if owner._stopping.wait(min(left, 0.02)):
                raise BrokenPipeError("fake LLM server stopping")
            if self._client_gone():
                raise _ClientGone()

    def _write_body(self, data: bytes, reply: FakeReply) -> None:
        """The body: at once, trickled, chunked, or stalled after some bytes."""
        chunked = reply.chunked
        pieces: Iterable[bytes]
        if reply.trickle_bps:
            step = max(1, int(reply.trickle_bps // 20))
            pause = step / float(reply.trickle_bps)
            pieces = (data[i:i + step] for i in range(0, len(data), step))
        else:
            pause = 0.0
            size = 65536 if chunked else max(len(data), 1)
            pieces = (data[i:i + size] for i in range(0, len(data), size))
        if reply.stall_after is not None:
            head = data[: reply.stall_after]
            pieces = [head] if head else []
        for i, piece in enumerate(pieces):
            if i and pause:
                self._wait(pause)
            if chunked:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            else:
                self.wfile.write(piece)
            self.wfile.flush()
        if reply.stall_after is not None:
            self._wait(math.inf)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

    def do_GET(self) -> None:
        owner = self.server.owner
        if self.path.rstrip("/").endswith("/models"):
            owner._listed()
            ids = owner.served_models or [owner.model or "fake-model"]
            body = {"object": "list", "data": [{"id": i, "object": "model"} for i in ids]}
            self._send(200, json.dumps(body).encode())
        else:
            self._send(404, json.dumps(_error_body("openai", 404, "not found")).encode())

    def do_POST(self) -> None:
        raw = self._read_body()
        path = self.path.split("?", 1)[0].rstrip("/")
        kind: Kind
        if path.endswith(("/chat/completions", "/responses")):
            kind = "openai"
        elif _GEMINI_PATH.search(path):
            kind = "gemini"
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
        owner = self.server.owner
        req = _record(kind, path, headers, body, owner.flavor)
        try:
            reply = owner._behaviour_for(req)
        except Exception as exc:  # a broken test responder becomes a 500, not a hung client
            logger.exception("fake LLM responder failed")
            reply = FakeReply(status=500, error_message=f"fake responder failed: {exc}")
        owner._serving(+1)
        try:
            self._respond(req, reply)
        except _ClientGone:
            owner._gone()
        except (BrokenPipeError, ConnectionResetError):
            if not owner._stopping.is_set():
                owner._gone()
            raise
        finally:
            owner._serving(-1)

    def _respond(self, req: RecordedRequest, reply: FakeReply) -> None:
        owner = self.server.owner
        if reply.delay_s > 0:
            self._wait(reply.delay_s)
        if reply.raw_body is not None:
            data = reply.raw_body.encode() if isinstance(reply.raw_body, str) else reply.raw_body
        elif reply.status >= 400:
            msg = reply.error_message or f"fake error {reply.status}"
            data = json.dumps(_error_body(req.kind, reply.status, msg)).encode()
        else:
            if owner.flavor == "ignores_response_format" and reply.text is None and (
                reply.json_obj is not None and req.tool_name is None
            ):
                prose = "Sure! Here is my answer:\n```json\n" + json.dumps(reply.json_obj)
                reply = replace(reply, text=prose + "\n```\nHope this helps.")
            model = reply.model or owner.model or req.model or "fake-model"
            data = json.dumps(_success_body(req, reply, model)).encode()
        slow = reply.trickle_bps or reply.stall_after is not None or reply.chunked
        if not slow:
            self._send(reply.status, data, reply.headers)
            return
        self._send_head(reply.status, reply.headers, length=None if reply.chunked else len(data))
        self._write_body(data, reply)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: FakeLLMServer


class FakeLLMServer:
    """A real HTTP server on 127.0.0.1 that imitates the OpenAI and Anthropic APIs.

    Routes: ``POST /v1/chat/completions`` and ``POST /v1/responses`` (OpenAI),
    ``POST /v1/messages`` (Anthropic), ``POST /v1beta/models/{model}:generateContent``
    (Gemini's native API, see :attr:`gemini_native_base_url`); ``GET /v1/models`` lists the
    served models. Every
    request is recorded in :attr:`requests`. Thread-safe; use as a context manager, or call
    :meth:`start` / :meth:`stop`. ``flavor``, ``model`` and ``served_models`` are attributes
    too (restored by :meth:`reset`).

    Args:
        responder: Default behaviour when the script queue is empty; ``None`` means
            :func:`random_proposer` with ``seed``.
        seed: Seed of the default random proposer.
        host: Interface to bind (loopback only: a test tool never listens outside).
        port: Port to bind; 0 picks a free one.
        flavor: ``"openai"`` (a cooperative server), ``"llama_cpp_python"`` (its server's
            ``response_format`` handling) or ``"ignores_response_format"`` (prose around the
            JSON, schemas only followed when written in the system text).
        model: The model every reply names (a server's own alias); ``None`` echoes the
            requested one.
        served_models: The models ``GET /v1/models`` lists; a request for another one gets
            404 "The model `x` does not exist." (vLLM's wording). ``None`` accepts any.
    """

    def __init__(
        self,
        *,
        responder: Responder | None = None,
        seed: int = 0,
        host: str = "127.0.0.1",
        port: int = 0,
        flavor: Flavor = "openai",
        model: str | None = None,
        served_models: list[str] | None = None,
    ) -> None:
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"host={host!r}: the fake LLM server binds loopback only "
                             "(127.0.0.1 or ::1).")
        if flavor not in ("openai", "llama_cpp_python", "ignores_response_format"):
            raise ValueError(f"flavor={flavor!r} is unknown: use openai, llama_cpp_python or "
                             "ignores_response_format.")
        self._config = (flavor, model, list(served_models) if served_models else None)
        self.flavor: Flavor = flavor
        self.model = model
        self.served_models = self._config[2]
        self._active = 0
        self._disconnects = 0
        self._models_listed = 0
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

    @property
    def gemini_native_base_url(self) -> str:
        """Base URL of Gemini's native API (``HPO_GEMINI_NATIVE_BASE_URL``; the client appends
        ``/v1beta/models/{model}:generateContent``)."""
        return self.url

    # -- scripting --------------------------------------------------------------------------
    def script(self, behaviours: Iterable[Behaviour]) -> None:
        """Queue behaviours, consumed one per request, before the responder is asked."""
        with self._lock:
            self._queue.extend(behaviours)

    def _serving(self, delta: int) -> None:
        with self._lock:
            self._active += delta

    def _gone(self) -> None:
        with self._lock:
            self._disconnects += 1

    def _listed(self) -> None:
        with self._lock:
            self._models_listed += 1

    def _refusal(self, req: RecordedRequest) -> FakeReply | None:
        """What the server itself answers before any model runs (not a scripted reply)."""
        if self.served_models is not None and req.model not in self.served_models:
            msg = (f"model: {req.model}" if req.kind == "anthropic"
                   else f"The model `{req.model}` does not exist.")
            return FakeReply(status=404, error_message=msg)
        if self.flavor == "llama_cpp_python" and req.api == "chat":
            fmt = req.body.get("response_format")
            if isinstance(fmt, dict) and fmt.get("type") not in (None, "text", "json_object"):
                return FakeReply(status=500, error_message=_LLAMA_CPP_REJECTION)
            if isinstance(fmt, dict) and fmt.get("type") == "json_object" and not fmt.get(
                "schema"
            ):
                # the grammar only forces "some JSON": a small model echoes the schema text
                return FakeReply(json_obj=_hint_schema(req.system) or {"json": "object"})
        return None

    def _behaviour_for(self, req: RecordedRequest) -> FakeReply:
        refusal = self._refusal(req)
        with self._lock:
            self._requests.append(req)
            if refusal is not None:
                return refusal
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
    def active(self) -> int:
        """Replies being sent right now (a trickling or stalled one counts until it ends)."""
        with self._lock:
            return self._active

    @property
    def disconnects(self) -> int:
        """Replies the client gave up on before they were complete."""
        with self._lock:
            return self._disconnects

    @property
    def models_listed(self) -> int:
        """How many times ``GET /v1/models`` was asked."""
        with self._lock:
            return self._models_listed

    @property
    def pending(self) -> int:
        """Scripted behaviours not consumed yet."""
        with self._lock:
            return len(self._queue)

    def calls_by_kind(self) -> dict[str, int]:
        """Count requests per protocol: ``{"openai": n, "anthropic": m}`` (and ``"gemini"``
        once a native Gemini request came)."""
        counts = {"openai": 0, "anthropic": 0}
        for req in self.requests:
            counts[req.kind] = counts.get(req.kind, 0) + 1
        return counts

    def reset(self) -> None:
        """Forget recorded requests, scripted behaviours and disconnects; restore the default
        responder and the constructor's ``flavor``, ``model`` and ``served_models``."""
        with self._lock:
            self._requests.clear()
            self._queue.clear()
            self._disconnects = 0
            self._models_listed = 0
            self.responder = self._default
            self.flavor, self.model, served = self._config
            self.served_models = list(served) if served is not None else None
