"""Redaction of credentials in logged pairs (on by default; ``--no-redact`` keeps everything).

The exact rules (docs/log-format.md repeats them for users):

Headers (requests, responses, HTTP/2 header blocks and trailers alike), by lower-cased name:
  * a name in `SECRET_HEADERS`, or a name containing ``auth``, ``secret``, ``key``, ``cookie``,
    ``passw``, ``bearer``, ``credential``, ``signature`` or ``token`` - except ``tokens`` (plural):
    ``anthropic-ratelimit-input-tokens-remaining``, ``x-ratelimit-limit-tokens`` are counters the
    viewer shows, not secrets. (So ``x-api-key``, ``api-key``, ``x-goog-api-key``,
    ``x-amz-security-token``, ``x-litellm-api-key``, ``proxy-authorization``, ``www-authenticate``,
    ``sec-websocket-key``, ``idempotency-key`` are all redacted: the last ones are not secrets, but a
    nonce lost from a log costs nothing.)
  * the value becomes claude-trace's form: over 14 characters ``first 10 + "..." + last 4``, 5-14
    characters ``first 2 + "..." + last 2``, shorter ``[REDACTED]``; HTTP Basic credentials (base64 of
    ``user:password``, where those few characters would give most of a short password away) become
    ``Basic [REDACTED]``.
  * ``location``, ``content-location`` and ``referer`` values are URLs: their query is redacted as below.

URL query parameters (the request URL, and the URL headers above): a parameter whose name, split into
words (``_``, ``-``, ``.``, camelCase: ``X-Amz-Signature`` -> x amz signature, ``AWSAccessKeyId`` -> aws
access key id), contains one of `QUERY_WORDS` (``key``, ``apikey``, ``token``, ``secret``,
``password``, ``passwd``, ``sig``, ``signature``, ``credential``, ``auth``, ``authorization``, ...);
plus `BODY_KEYS` names, and in OAuth exchanges (below) `OAUTH_KEYS` (``code``, ``code_verifier``, ...). The value
becomes ``[REDACTED]``; the rest of the URL is kept byte for byte. A password in a URL's userinfo
(``https://user:pw@host/``) becomes ``[REDACTED]`` too.

Bodies, for pairs that are *not* model API calls (those the default filter logs: Messages API and
Bedrock calls carry the conversation, which is the point of the log, and are never altered):
  * JSON (request or response), at any nesting: members whose key, lower-cased with ``_``/``-``
    removed, is in `BODY_KEYS` (``access_token``, ``refresh_token``, ``id_token``, ``client_secret``,
    ``password``, ``api_key``, ``session_token``, ... and their camelCase forms);
  * form-encoded (``application/x-www-form-urlencoded``) bodies: the same names, as parameters;
  * in an *OAuth exchange* - the request path contains ``oauth`` or ``openid-connect`` or ends in
    ``/token`` / ``/access_token`` / ``/authorize``, or the request body has a top-level
    ``grant_type`` - also `OAUTH_KEYS` (``code``, ``code_verifier``, ``device_code``, ``assertion``,
    ``client_assertion``, ``otp``); ``code`` is not redacted elsewhere: APIs use it for error codes;
  * the value (whatever its type) becomes ``"[REDACTED]"``.
Bodies over the inline limit (16 MiB), streamed into the log line, and multipart bodies are not
rewritten.

Command lines (``tracer.process``, the summary's process tree; `redact_argv`): the value after an option
named like a credential (``--api-key X``, ``--token=X``, ``--password X``), header arguments whose name
is a secret header's by the rule above (``-H 'x-api-key: X'``), ``NAME=value`` words whose name is in
`SECRET_HEADERS` or ends like a credential option (``ANTHROPIC_API_KEY=``, ``GH_TOKEN=``; not ``KEYBOARD=``),
``name: value`` / ``name=value`` inside longer arguments (``sh -c`` scripts, JSON), and key-shaped words
(``sk-...``, ``AKIA...``, JWTs), each shortened like a header value.

Cost: header names and query names are classified once (a precompiled regex) and remembered in a
bounded dict, so a pair's headers cost one dict lookup each; bodies are only walked for the pairs
and content types above, on the object the record builder parsed anyway (bench/redaction.py).
"""

from __future__ import annotations

import re
from urllib.parse import unquote

REDACTED = "[REDACTED]"

SECRET_HEADERS = frozenset({
    "authorization", "proxy-authorization", "x-api-key", "api-key", "x-goog-api-key",
    "x-amz-security-token", "x-litellm-api-key", "cookie", "set-cookie", "x-auth-token",
    "x-session-token", "x-access-token", "x-csrf-token", "x-xsrf-token", "bearer",
})
NOT_SECRET_HEADERS = frozenset({":authority"})
_HEADER_RE = re.compile(r"auth|secret|key|cookie|passw|bearer|credential|signature|token(?!s)")
URL_HEADERS = frozenset({"location", "content-location", "referer"})

QUERY_WORDS = frozenset({
    "key", "apikey", "token", "secret", "password", "passwd", "pwd", "sig", "signature",
    "credential", "credentials", "auth", "authorization", "jwt", "session",
})
BODY_KEYS = frozenset({
    "accesstoken", "refreshtoken", "idtoken", "clientsecret", "password", "passwd", "apikey",
    "sessiontoken", "authtoken", "secretaccesskey", "privatekey", "clientassertion",
})
OAUTH_KEYS = frozenset({"code", "codeverifier", "devicecode", "assertion", "otp"})

_WORDS = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")
_OAUTH_PATH = re.compile(r"oauth|openid-connect|/(?:access_)?token/?$|/authorize/?$")
_CACHE_MAX = 4096

_header_cache: dict[str, bool] = {}
_query_cache: dict[str, int] = {}     # 0 public, 1 secret, 2 secret in OAuth exchanges only
_key_cache: dict[str, int] = {}


def _remember(cache: dict, key, value):
    if len(cache) < _CACHE_MAX:       # names come from the wire: never let them grow the cache unbounded
        cache[key] = value
    return value


def header_is_secret(name: str) -> bool:
    """``name`` lower-cased."""
    v = _header_cache.get(name)
    if v is None:
        v = _remember(_header_cache, name, name not in NOT_SECRET_HEADERS and (
            name in SECRET_HEADERS or _HEADER_RE.search(name) is not None))
    return v


def redact_value(value: str) -> str:
    """claude-trace's form for a credential header value."""
    n = len(value)
    if n > 14:
        return value[:10] + "..." + value[-4:]
    if n >= 5:
        return value[:2] + "..." + value[-2:]
    return REDACTED


def redact_header_value(name: str, value: str) -> str:
    if value[:6].lower() == "basic " and "authorization" in name:
        return "Basic " + REDACTED
    return redact_value(value)


def _query_class(name: str) -> int:
    v = _query_cache.get(name)
    if v is None:
        words = {w.lower() for w in _WORDS.findall(name)}
        joined = name.lower().replace("_", "").replace("-", "")
        if words & QUERY_WORDS or joined in BODY_KEYS:
            v = 1
        elif joined in OAUTH_KEYS:
            v = 2
        else:
            v = 0
        _remember(_query_cache, name, v)
    return v


def redact_params(text: str, oauth: bool = False) -> str:
    """``a=1&key=2`` -> ``a=1&key=[REDACTED]`` (names decoded only as far as %-escapes of letters)."""
    parts = text.split("&")
    changed = False
    for i, part in enumerate(parts):
        name, eq, _value = part.partition("=")
        if not eq:
            continue
        n = name.replace("+", " ")
        if "%" in n:
            n = unquote(n)
        c = _query_class(n)
        if c == 1 or (c == 2 and oauth):
            parts[i] = name + "=" + REDACTED
            changed = True
    return "&".join(parts) if changed else text


def redact_url(url: str, oauth: bool = False) -> str:
    """The query's secret parameters and a userinfo password redacted; everything else as is."""
    q = url.find("?")
    if q >= 0:
        frag = url.find("#", q)
        end = len(url) if frag < 0 else frag
        query = redact_params(url[q + 1:end], oauth)
        url = url[:q + 1] + query + url[end:]
    if "@" in url:
        m = re.match(r"([a-zA-Z][a-zA-Z0-9+.-]*://[^/@:]*:)([^/@]*)@", url)
        if m:
            url = m.group(1) + REDACTED + url[m.end(2):]
    return url


def oauth_request(path: str, body) -> bool:
    """Is this request an OAuth (token/authorize) exchange? ``path`` without the query."""
    if _OAUTH_PATH.search(path.lower()):
        return True
    return isinstance(body, dict) and "grant_type" in body


def _key_class(key: str) -> int:
    v = _key_cache.get(key)
    if v is None:
        k = key.lower().replace("_", "").replace("-", "")
        v = _remember(_key_cache, key, 1 if k in BODY_KEYS else 2 if k in OAUTH_KEYS else 0)
    return v


def redact_json(obj, oauth: bool = False):
    """Replace secret members at any depth of a parsed JSON value, in place; returns it."""
    stack = [obj]
    while stack:
        o = stack.pop()
        if isinstance(o, dict):
            for k, v in o.items():
                c = _key_class(k) if isinstance(k, str) else 0
                if c == 1 or (c == 2 and oauth):
                    o[k] = REDACTED
                elif isinstance(v, (dict, list)):
                    stack.append(v)
        elif isinstance(o, list):
            stack.extend(v for v in o if isinstance(v, (dict, list)))
    return obj


def form_has_grant_type(text: str) -> bool:
    return text.startswith("grant_type=") or "&grant_type=" in text


# -- command lines (tracer.process in records, the summary's process tree) -----------------------

_TOKENISH = re.compile(r"^(?:sk-[A-Za-z0-9_-]{16,}|(?:ghp|gho|xox[abpr])[-_][A-Za-z0-9_-]{10,}|"
                       r"AKIA[0-9A-Z]{16}|eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\..*)$")
_SECRET_WORD = r"(?:[a-z0-9]+[_-])*(?:api[_-]?key|key|token|secret|passw(?:or)?d|authorization|auth|cookie|credentials?)"
_SECRET_OPT = re.compile(r"(?i)^--?" + _SECRET_WORD + "$")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_HEADER_ARG = re.compile(r"^\s*([A-Za-z0-9_-]+)\s*:\s*(.*)$", re.S)


_SECRET_IN_TEXT = re.compile(
    r"(?i)(\b" + _SECRET_WORD + r"[\"']?\s*[:=]\s*[\"']?)((?:bearer|basic)\s+)?([^\s'\";&|,}]+)")
_TOKEN_IN_TEXT = re.compile(r"\b(sk-[A-Za-z0-9_-]{16,}|AKIA[0-9A-Z]{16})\b")


def _redact_text(text: str) -> str:
    """Secrets inside a longer argument (a shell script given to sh -c, a JSON option)."""
    text = _SECRET_IN_TEXT.sub(lambda m: m.group(1) + (m.group(2) or "") + redact_value(m.group(3)), text)
    return _TOKEN_IN_TEXT.sub(lambda m: redact_value(m.group(1)), text)


def _redact_word(word: str) -> str:
    if _TOKENISH.match(word):
        return redact_value(word)
    m = re.match(r"(?i)^(bearer|basic)\s+(\S+)$", word)
    if m:
        return f"{m.group(1)} {redact_value(m.group(2))}"
    return word


def redact_argv(argv: list[str]) -> list[str]:
    """A command line as logged (a process' argv): values of secret-looking options (--api-key X,
    --token=X), header arguments whose name is a secret header's (-H 'x-api-key: X'), NAME=value
    words named like a credential, secrets inside longer arguments and key-shaped words are
    redacted the way header values are."""
    out: list[str] = []
    secret_next = False
    for a in argv:
        if secret_next:
            out.append(redact_value(a))
            secret_next = False
            continue
        if "=" in a and a.startswith("-"):
            name, value = a.split("=", 1)
            if _SECRET_OPT.match(name):
                out.append(f"{name}={redact_value(value)}")
                continue
        if _SECRET_OPT.match(a):
            out.append(a)
            secret_next = True
            continue
        m = _HEADER_ARG.match(a)
        if m and header_is_secret(m.group(1).lower()):
            out.append(f"{m.group(1)}: {redact_header_value(m.group(1).lower(), m.group(2).strip())}")
            continue
        if "=" in a and not a.startswith("-"):
            name, value = a.split("=", 1)
            if _ENV_NAME.fullmatch(name) and (name.lower() in SECRET_HEADERS or _SECRET_OPT.match("--" + name)):
                out.append(f"{name}={redact_value(value)}")
                continue
        a = " ".join(_redact_word(w) for w in a.split(" ")) if " " in a else _redact_word(a)
        out.append(_redact_text(a))
    return out
