"""Redaction rules (tracer/sinks/redact.py, docs/log-format.md): headers, URLs, JSON and form bodies,
OAuth exchanges; model API bodies untouched; --no-redact keeps everything."""

from __future__ import annotations

import orjson
import pytest

from tracer.protocols.base import Body, ConnInfo, Exchange, Message
from tracer.sinks import redact as R
from tracer.sinks.record import Clock, build_record

CONN = ConnInfo(pid=7, tid=8, comm="c", conn_id="7:0x10:1")


def _body(b: bytes) -> Body:
    x = Body()
    x.append(b)
    return x


def ex(path="/v1/messages", host="api.anthropic.com", req_ct="application/json", req_body=b"{}",
       resp_ct="application/json", resp_body=b"{}", req_headers=(), resp_headers=(), trailers=()):
    req = Message(ts_ns=1, end_ts_ns=2, method="POST", target=path, authority=host,
                  headers=[("Host", host), ("Content-Type", req_ct), *req_headers],
                  body=_body(req_body), complete=True, wire_bytes=1)
    resp = Message(ts_ns=3, end_ts_ns=4, status=200, headers=[("Content-Type", resp_ct), *resp_headers],
                   body=_body(resp_body), complete=True, wire_bytes=1, trailers=list(trailers))
    return Exchange(conn=CONN, request=req, response=resp, body_times=[])


@pytest.mark.parametrize("name", [
    "authorization", "proxy-authorization", "x-api-key", "api-key", "x-goog-api-key",
    "x-amz-security-token", "x-litellm-api-key", "cookie", "set-cookie", "x-auth-token",
    "x-session-token", "x-access-token", "x-custom-secret", "x-my-token", "openai-organization-key",
    "x-amz-credential", "x-goog-signature", "x-password", "www-authenticate", "x-bearer"])
def test_secret_header_names(name):
    assert R.header_is_secret(name)


@pytest.mark.parametrize("name", [
    "content-type", "anthropic-version", "anthropic-beta", "user-agent", "x-stainless-os", "request-id",
    "anthropic-ratelimit-input-tokens-remaining", "anthropic-ratelimit-tokens-limit",
    "x-ratelimit-remaining-tokens", "keep-alive", ":authority", "x-claude-code-session-id", "host"])
def test_public_header_names(name):
    assert not R.header_is_secret(name)


def test_header_values_and_basic_auth():
    r = build_record(ex(req_headers=[("X-Amz-Security-Token", "FwoGZXIvYXdzEBYaDHqa0AP1234567890"),
                                     ("Api-Key", "abcdefgh"), ("X-Goog-Api-Key", "AIzaSyD-1234567890abcdef"),
                                     ("Authorization", "Basic dXNlcjpwYXNz")]), Clock())
    h = r["request"]["headers"]
    assert h["x-amz-security-token"] == "FwoGZXIvYX...7890"
    assert h["api-key"] == "ab...gh"
    assert h["x-goog-api-key"] == "AIzaSyD-12...cdef"
    assert h["authorization"] == "Basic [REDACTED]"


def test_http2_trailers_and_response_headers():
    r = build_record(ex(resp_headers=[("x-session-token", "s3cr3t-session-value-xyz")],
                        trailers=[("x-upstream-secret", "trailer-secret-value-123"), ("grpc-status", "0")]),
                     Clock())
    assert "s3cr3t-session-value" not in orjson.dumps(r).decode()
    assert r["tracer"]["trailers"]["x-upstream-secret"] == "trailer-se...-123"
    assert r["tracer"]["trailers"]["grpc-status"] == "0"


@pytest.mark.parametrize("url,kept,gone", [
    ("/v1/messages?beta=true", ["beta=true"], []),
    ("/v1beta/models/m:generateContent?key=AIzaSECRET1&alt=sse", ["alt=sse", "key=[REDACTED]"], ["AIzaSECRET1"]),
    ("/o?X-Amz-Signature=abcSIG&X-Amz-Credential=AKIAXX%2F2024&X-Amz-Date=2024",
     ["X-Amz-Date=2024"], ["abcSIG", "AKIAXX"]),
    ("/o?X-Goog-Signature=gsig123&GoogleAccessId=a", [], ["gsig123"]),
    ("/s?AWSAccessKeyId=AKIAOLD&Signature=oldsig&Expires=1", ["Expires=1"], ["AKIAOLD", "oldsig"]),
    ("/c?access_token=tok123&token=t2&sig=s3&keyword=kept&apiKey=k4", ["keyword=kept"],
     ["tok123", "t2", "s3", "k4"]),
    ("/x?code=404&state=a", ["code=404"], []),               # not an OAuth exchange: code is kept
    ("/oauth/callback?code=authcode99&state=a", ["state=a"], ["authcode99"]),
])
def test_url_query(url, kept, gone):
    r = build_record(ex(path=url, host="example.com"), Clock())
    u = r["request"]["url"]
    for k in kept:
        assert k in u, u
    for g in gone:
        assert g not in u, u


def test_url_userinfo():
    assert R.redact_url("https://bob:hunter2@proxy.example/x") == "https://bob:[REDACTED]@proxy.example/x"


OAUTH_REQ_JSON = orjson.dumps({"grant_type": "authorization_code", "code": "ac_123456789",
                               "code_verifier": "verifier-xyz", "client_id": "cid",
                               "redirect_uri": "https://x/cb"})
OAUTH_RESP = orjson.dumps({"access_token": "sk-ant-oat01-ACCESS", "refresh_token": "sk-ant-ort01-REFRESH",
                           "id_token": "eyJ.ID", "expires_in": 3600, "token_type": "Bearer",
                           "account": {"uuid": "u1", "nested": [{"password": "pw-deep"}]}})


def test_oauth_json_exchange():
    r = build_record(ex(path="/v1/oauth/token", host="console.anthropic.com", req_body=OAUTH_REQ_JSON,
                        resp_body=OAUTH_RESP), Clock())
    text = orjson.dumps(r).decode()
    for s in ("ac_123456789", "verifier-xyz", "sk-ant-oat01-ACCESS", "sk-ant-ort01-REFRESH", "eyJ.ID", "pw-deep"):
        assert s not in text
    assert r["request"]["body"]["client_id"] == "cid"
    assert r["response"]["body"]["expires_in"] == 3600
    assert r["response"]["body"]["access_token"] == "[REDACTED]"


def test_oauth_form_exchange():
    form = b"grant_type=refresh_token&refresh_token=rt-SECRET&client_id=abc&client_secret=cs-SECRET&scope=a+b"
    r = build_record(ex(path="/token", host="oauth2.example.com", req_ct="application/x-www-form-urlencoded",
                        req_body=form, resp_body=OAUTH_RESP), Clock())
    b = r["request"]["body"]
    assert b == ("grant_type=refresh_token&refresh_token=[REDACTED]&client_id=abc&client_secret=[REDACTED]"
                 "&scope=a+b")
    assert "REFRESH" not in orjson.dumps(r).decode()


def test_password_form_anywhere_and_code_only_in_oauth():
    r = build_record(ex(path="/login", host="example.com", req_ct="application/x-www-form-urlencoded",
                        req_body=b"user=bob&password=hunter2&code=7"), Clock())
    assert r["request"]["body"] == "user=bob&password=[REDACTED]&code=7"
    r = build_record(ex(path="/api", host="example.com", resp_body=b'{"error":{"code":429},"apiKey":"k"}'),
                     Clock())
    assert r["response"]["body"] == {"error": {"code": 429}, "apiKey": "[REDACTED]"}


def test_model_api_bodies_untouched():
    body = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "tool_result", "content": "x"}]}], "tools": [{"name": "t", "input_schema": {
            "properties": {"password": {"type": "string"}, "code": {"type": "string"}}}}]})
    r = build_record(ex(req_body=body), Clock())
    assert r["request"]["body"] == orjson.loads(body)


def test_no_redact_keeps_everything():
    r = build_record(ex(path="/v1/oauth/token?key=k1", host="console.anthropic.com", req_body=OAUTH_REQ_JSON,
                        resp_body=OAUTH_RESP, req_headers=[("x-goog-api-key", "gk-123456789012345")]),
                     Clock(), redact=False)
    text = orjson.dumps(r).decode()
    for s in ("ac_123456789", "sk-ant-oat01-ACCESS", "key=k1", "gk-123456789012345"):
        assert s in text


def test_name_caches_are_bounded():
    for i in range(R._CACHE_MAX + 100):
        R.header_is_secret(f"x-h{i}")
    assert len(R._header_cache) <= R._CACHE_MAX
