"""CPython client (ssl -> OpenSSL) calling Anthropic on Bedrock the way the AWS SDK does: POST
/model/{id}/invoke-with-response-stream with Host bedrock-runtime.REGION.amazonaws.com (connected to the
local mock), reading the binary event stream.  usage: bedrock_client.py BASE_URL CAFILE [--header K:V]
Prints one JSON line: status, x-mock-record-id, sha256 of the body as received."""
import argparse
import hashlib
import http.client
import json
import ssl
from urllib.parse import quote, urlsplit

ap = argparse.ArgumentParser()
ap.add_argument("base_url")
ap.add_argument("cafile")
ap.add_argument("--model", default="anthropic.claude-3-5-sonnet-20241022-v2:0")
ap.add_argument("--header", action="append", default=[])
args = ap.parse_args()
u = urlsplit(args.base_url)
ctx = ssl.create_default_context(cafile=args.cafile)
conn = http.client.HTTPSConnection(u.hostname, u.port, context=ctx, timeout=60)
body = json.dumps({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 256,
                   "messages": [{"role": "user", "content": "hello from bedrock"}]})
headers = {"Host": "bedrock-runtime.us-east-1.amazonaws.com", "content-type": "application/json",
           "accept": "application/vnd.amazon.eventstream",
           "authorization": "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20260101/us-east-1/bedrock/aws4_request, "
                            "SignedHeaders=host;x-amz-date, Signature=0123456789abcdef0123456789abcdef",
           "x-amz-date": "20260101T000000Z"}
for h in args.header:
    k, _, v = h.partition(":")
    headers[k.strip()] = v.strip()
conn.request("POST", f"/model/{quote(args.model, safe='')}/invoke-with-response-stream", body=body, headers=headers)
r = conn.getresponse()
h = hashlib.sha256()
while True:
    b = r.read(65536)
    if not b:
        break
    h.update(b)
print(json.dumps({"status": r.status, "record": r.getheader("x-mock-record-id"), "sha256": h.hexdigest()}))
