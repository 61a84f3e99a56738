"""Redaction (issue 15 item 2): secret-shaped text, registered keys, and every log record.

The log-record factory installed by ``import hpo`` is tested as a user's process sees it: a
third-party logger (``httpx``, ``openai._base_client``, a brand-new one) logs a key in its
args, after ``logging.config.dictConfig`` replaced every handler the way Hydra does at each job;
what the handler writes holds no key.
"""

from __future__ import annotations

import io
import logging
import logging.config
import secrets
import time
from collections.abc import Iterator

import pytest

import hpo  # noqa: F401  (installs the redaction)
from hpo._logging import LOG_TEXT_MAX_CHARS, install_log_redaction
from hpo.secrets import REDACTED, SECRET_PATTERNS, redact, register_secret, secret_values

#: ``(pattern name, text, what the text must become)``: every row of SECRET_PATTERNS has a case.
PATTERN_CASES = [
    ("bearer token", "Authorization: Bearer sk-abc123def456ghi789jkl",
     "Authorization: Bearer ***"),
    ("bearer token", "authorization: bearer eyJhbGciOi.J9x1y2z3w4", "authorization: bearer ***"),
    ("sk- key", "your key sk-ant-api03-abcdefghijklmnopqrstu is bad", "your key *** is bad"),
    ("sk- key", "partial sk-proj-0123456789abcdef…", "partial ***…"),
    ("Google API key", "key=AIza" + "B1" * 18, "key=***"),
    ("URL password", "https://user:pa55word@host/x", "https://user:***@host/x"),
    ("secret field", "x-api-key: abcdef123456", "x-api-key: ***"),
    ("secret field", "X-API-KEY: ABCDEF123456", "X-API-KEY: ***"),
    ("secret field", '{"api_key": "zzzzzz99999"}', '{"api_key": "***"}'),
    ("secret field", "OPENAI_API_KEY=foo-bar-baz-1", "OPENAI_API_KEY=***"),
    ("secret field", "client_secret=abcdefgh&x=1", "client_secret=***&x=1"),
    ("secret field", "password: hunter2hunter2", "password: ***"),
]

#: Text that looks close to a secret and must be left as it is.
NOT_SECRETS = [
    "max_tokens=2048",
    "Bearer authentication is described in RFC 6750",
    "the token budget is 4096",
    "optimizer.lr=0.003 data.batch_size=32",
    "password=***",
    "https://example.org/path?q=1",
]


def test_every_pattern_has_a_case() -> None:
    assert {name for name, _ in SECRET_PATTERNS} == {name for name, _, _ in PATTERN_CASES}


@pytest.mark.parametrize(("name", "text", "expected"), PATTERN_CASES)
def test_secret_patterns(name: str, text: str, expected: str) -> None:
    assert redact(text, environ={}) == expected, name


@pytest.mark.parametrize("text", NOT_SECRETS)
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert redact(text, environ={}) == text


def test_configured_values_are_removed_whatever_their_shape() -> None:
    env = {"MY_SERVICE_TOKEN": "plainvalue42", "DEBUG": "true", "SHORT_API_KEY": "abc"}
    found = secret_values(env)  # plus the keys registered so far in this process
    assert "plainvalue42" in found and "abc" not in found and "true" not in found
    assert redact("got plainvalue42 and abc", environ=env) == f"got {REDACTED} and abc"


def test_a_registered_key_is_removed_everywhere() -> None:
    value = f"cred{secrets.token_hex(8)}"  # no secret shape, no secret-looking variable
    assert value in redact(f"x {value} y", environ={})
    register_secret(value)
    assert redact(f"x {value} y", environ={}) == f"x {REDACTED} y"
    register_secret("abc")  # too short to be told from ordinary text: ignored
    assert redact("abc", environ={}) == "abc"


def test_redaction_is_linear_in_the_text() -> None:
    # long words once made the "secret field" pattern quadratic; this finishes at once when
    # linear and not within the test's lifetime otherwise (no timing is asserted)
    for text in ["a" * 300_000, "a." * 150_000, "api_key " * 30_000]:
        assert redact(text, environ={}) == text


@pytest.fixture
def key(monkeypatch: pytest.MonkeyPatch) -> str:
    canary = f"canary{secrets.token_hex(10)}"  # no sk- shape: only the configured value finds it
    monkeypatch.setenv("SOMEPROVIDER_API_KEY", canary)
    return canary


@pytest.fixture
def hydra_like_logging() -> Iterator[io.StringIO]:
    """The root handlers replaced by dictConfig, as Hydra's job logging does; restored after."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    stream = io.StringIO()
    logging.config.dictConfig({
        "version": 1,
        "formatters": {"simple": {"format": "[%(name)s][%(levelname)s] - %(message)s"}},
        "handlers": {"mem": {"class": "logging.StreamHandler", "formatter": "simple",
                             "stream": stream}},
        "root": {"level": "DEBUG", "handlers": ["mem"]},
        "disable_existing_loggers": False,
    })
    yield stream
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


@pytest.mark.parametrize("name", ["httpx", "openai._base_client", "anthropic", "brand.new.lib"])
def test_third_party_records_are_redacted(
    name: str, key: str, hydra_like_logging: io.StringIO
) -> None:
    install_log_redaction()  # idempotent: a second call must not wrap the factory twice
    log = logging.getLogger(name)
    log.warning("request headers: %s", {"authorization": f"Bearer {key}"})
    log.info("echo %s and %r", key, f"sk-{key}")
    log.debug("header x-api-key: %s", key)
    out = hydra_like_logging.getvalue()
    assert out.count("\n") == 3, out
    assert key not in out
    assert "Bearer ***" in out


def test_tracebacks_and_odd_records_are_redacted(
    key: str, hydra_like_logging: io.StringIO
) -> None:
    log = logging.getLogger("hpo.somewhere")
    try:
        raise RuntimeError(f"server said: Incorrect API key provided: {key}")
    except RuntimeError:
        log.exception("the call failed")
    log.warning("bad format %d", key)  # a wrong format: still one redacted line, no key
    log.warning(f"an f-string with {key} in it")
    out = hydra_like_logging.getvalue()
    assert "RuntimeError" in out and "the call failed" in out
    assert "unformattable log arguments" in out
    assert key not in out


def test_the_factory_is_installed_once() -> None:
    before = logging.getLogRecordFactory()
    install_log_redaction()
    assert logging.getLogRecordFactory() is before
    record = logging.getLogger("x").makeRecord("x", logging.INFO, __file__, 1, "Bearer %s",
                                                ("tok3n-abcdefgh",), None)
    assert record.getMessage() == "Bearer ***"
    assert record.created <= time.time()


def test_huge_records_are_capped_after_redaction(
    key: str, hydra_like_logging: io.StringIO
) -> None:
    log = logging.getLogger("hpo.samplers._llm")
    bad = "9" * (LOG_TEXT_MAX_CHARS - 10) + key + "9" * 3_000_000  # the key across the cut
    fmt = "2 problem(s) in the proposals, asking the chain for a repair: %r"
    log.info(fmt, bad)
    out = hydra_like_logging.getvalue()
    assert len(out) < LOG_TEXT_MAX_CHARS + 200
    mark = f"… [truncated: {len(fmt % (bad,))} characters in all]"
    assert out.rstrip().endswith(mark), out[-80:]
    assert key[:6] not in out


def test_the_key_a_client_reads_is_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    """``agent.api_key_env`` may name any variable: the key read from it is redacted too."""
    from hpo.llm.providers import make_client

    value = f"cred{secrets.token_hex(10)}"
    monkeypatch.setenv("MY_LLM_CRED", value)  # a name that does not look secret
    assert redact(value) == value
    make_client(provider="openai", api_key_env="MY_LLM_CRED", base_url="http://127.0.0.1:9/v1")
    assert redact(f"the key was {value}") == f"the key was {REDACTED}"
