"""Sends every kind of credential the redaction rules cover (docs/log-format.md) to the mock server,
over HTTP/1.1 (CPython's ssl) and, with --h2, over HTTP/2 (httpx + h2): credential headers, secret
query parameters, and an OAuth token exchange with JSON and with form bodies.

usage: secrets_client.py BASE_URL CAFILE SECRET_PREFIX [--h2]
Every secret value starts with SECRET_PREFIX so the test can look for it in the log. Prints the mock's
record id of each response.
"""
import http.client
import json
import ssl
import sys
from urllib.parse import urlsplit

base, cafile, p = sys.argv[1:4]
h2 = "--h2" in sys.argv
headers = {
    "x-amz-security-token": p + "amzsecuritytoken",
    "x-goog-api-key": p + "googapikey",
    "api-key": p + "azureapikey",
    "x-litellm-api-key": p + "litellmkey",
    "x-custom-secret": p + "customsecret",
    "x-upstream-auth": p + "upstreamauth",
    "authorization": "Basic " + p + "basiccreds",
    "content-type": "application/json",
    "anthropic-version": "2023-06-01",
}
body = json.dumps({"model": "claude-sonnet-4-5", "max_tokens": 16,
                   "messages": [{"role": "user", "content": "hi"}]})
query = f"?beta=true&key={p}querykey&token={p}querytoken&X-Amz-Signature={p}amzsig"
oauth_json = json.dumps({"grant_type": "refresh_token", "refresh_token": p + "refreshtoken",
                         "client_id": "9d1c250a-e61b-44d9-88ed-5944d1962f5e"})
oauth_form = (f"grant_type=authorization_code&code={p}authcode&code_verifier={p}verifier"
              f"&client_id=cid&client_secret={p}clientsecret&redirect_uri=https%3A%2F%2Fx%2Fcb")
requests = [
    ("POST", "/v1/messages" + query, headers, body),
    ("POST", "/v1/oauth/token", {"content-type": "application/json"}, oauth_json),
    ("POST", "/v1/oauth/token", {"content-type": "application/x-www-form-urlencoded"}, oauth_form),
]

if h2:
    import httpx
    with httpx.Client(verify=cafile, http2=True, timeout=60) as c:
        for method, path, hdrs, data in requests:
            r = c.request(method, base + path, headers=hdrs, content=data.encode())
            assert r.http_version == "HTTP/2", r.http_version
            print(r.headers["x-mock-record-id"], r.status_code, flush=True)
else:
    u = urlsplit(base)
    conn = http.client.HTTPSConnection(u.hostname, u.port, context=ssl.create_default_context(cafile=cafile),
                                       timeout=60)
    for method, path, hdrs, data in requests:
        conn.request(method, path, body=data.encode(), headers=hdrs)
        r = conn.getresponse()
        r.read()
        print(r.getheader("x-mock-record-id"), r.status, flush=True)
