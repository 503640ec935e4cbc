"""Material for the gateway-auth bench scenarios (gw-jwt, gw-jwt-unique, gw-key): an RSA key
(openssl), its JWKS and PEM public key, RS256 tokens signed here (PKCS#1 v1.5 with Python's
big integers: no extra package), an API key and its SHA-256, and the wrk scripts that send
them. Everything stays in the bench's work directory."""

import base64
import hashlib
import json
import os
import re
import subprocess
import time

# SHA-256 DigestInfo prefix (RFC 8017 §9.2).
SHA256_PREFIX = bytes.fromhex("3031300d060960864801650304020105000420")
API_KEY = "rgk_bench-key-for-load-tests-only"
UNIQUE_TOKENS = 1000   # cycled by gw-jwt-unique: many more than the cache holds (see CACHE)
CACHE = 64             # ringgate cache_entries in the bench config (per shard, LRU: a cycle
                       # over more tokens than that misses every time)


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def rsa_key(workdir):
    pem = os.path.join(workdir, "jwt-rsa.pem")
    subprocess.run(["openssl", "genrsa", "-out", pem, "2048"], check=True, capture_output=True)
    text = subprocess.run(["openssl", "rsa", "-in", pem, "-noout", "-text"], check=True,
                          capture_output=True, text=True).stdout

    def field(name):
        block = re.search(name + r":\s*\n((?:\s+[0-9a-f:]+\n)+)", text).group(1)
        return int(re.sub(r"[\s:]", "", block), 16)

    key = {name: field(name) for name in
           ("modulus", "prime1", "prime2", "exponent1", "exponent2", "coefficient")}
    public = os.path.join(workdir, "jwt-rsa.pub.pem")
    subprocess.run(["openssl", "rsa", "-in", pem, "-pubout", "-out", public], check=True,
                   capture_output=True)
    return key, public


def rs256(key, claims):
    header = b64(json.dumps({"alg": "RS256", "kid": "bench", "typ": "JWT"}).encode())
    payload = b64(json.dumps(claims, separators=(",", ":")).encode())
    signing_input = f"{header}.{payload}".encode()
    n = key["modulus"]
    k = (n.bit_length() + 7) // 8
    t = SHA256_PREFIX + hashlib.sha256(signing_input).digest()
    em = int.from_bytes(b"\x00\x01" + b"\xff" * (k - len(t) - 3) + b"\x00" + t, "big")
    # The Chinese remainder theorem: two half-size exponentiations (RFC 8017 §5.1.2).
    p, q = key["prime1"], key["prime2"]
    m1, m2 = pow(em, key["exponent1"], p), pow(em, key["exponent2"], q)
    h = key["coefficient"] * (m1 - m2) % p
    signature = (m2 + h * q).to_bytes(k, "big")
    return f"{header}.{payload}.{b64(signature)}"


def prepare(workdir):
    """Writes the JWKS, the public key and the wrk scripts; returns what the configs need."""
    key, public_pem = rsa_key(workdir)
    n = key["modulus"]
    jwks = os.path.join(workdir, "jwks.json")
    with open(jwks, "w") as f:
        json.dump({"keys": [{"kty": "RSA", "kid": "bench", "alg": "RS256",
                             "n": b64(n.to_bytes((n.bit_length() + 7) // 8, "big")),
                             "e": "AQAB"}]}, f)
    exp = int(time.time()) + 86400
    claims = {"iss": "bench", "aud": "bench", "sub": "bench-user", "exp": exp}
    one = rs256(key, claims)
    many = [rs256(key, dict(claims, jti=str(i))) for i in range(UNIQUE_TOKENS)]
    scripts = {
        "gw-jwt": f'wrk.headers["Authorization"] = "Bearer {one}"\n',
        "gw-key": f'wrk.headers["x-api-key"] = "{API_KEY}"\n',
    }
    tokens = os.path.join(workdir, "tokens.txt")
    with open(tokens, "w") as f:
        f.write("\n".join(many) + "\n")
    scripts["gw-jwt-unique"] = f"""
local tokens = {{}}
for line in io.lines("{tokens}") do tokens[#tokens + 1] = line end
local i = 0
request = function()
  i = i % #tokens + 1
  return wrk.format(nil, nil, {{ ["Authorization"] = "Bearer " .. tokens[i] }})
end
"""
    scripts["gw-perimeter"] = scripts["gw-limit"] = scripts["gw-limit-reject"] = ""
    upstream_key = os.path.join(workdir, "upstream.key")
    with open(upstream_key, "w") as f:
        f.write("sk-bench-upstream-key-not-real\n")
    return {"jwks": jwks, "public_pem": public_pem, "scripts": scripts,
            "key_sha256": hashlib.sha256(API_KEY.encode()).hexdigest(),
            "upstream_key": upstream_key}


def ringgate_routes(material):
    """Routes and identity config appended to ringgate's bench config."""
    return f"""
[[consumers]]
name = "bench"
api_keys = [ {{ id = "bench", sha256 = "{material['key_sha256']}" }} ]
[jwt.bench]
algorithms = ["RS256"]
issuer = "bench"
audiences = ["bench"]
jwks_file = "{material['jwks']}"
cache_entries = {CACHE}
[[routes]]
name = "jwt"
path_prefix = "/jwt"
upstream = "origin"
auth = ["jwt:bench"]
[[routes]]
name = "key"
path_prefix = "/key"
upstream = "origin"
auth = ["api_key"]
[[routes]]
name = "perimeter"
path_prefix = "/perimeter"
upstream = "origin"
ip_allow = ["127.0.0.0/8"]
ip_deny = ["10.0.0.0/8"]
inject_headers = {{ "authorization" = {{ secret = "file:{material['upstream_key']}", prefix = "Bearer " }} }}
[rate_limits.bench-global]
key = "ip"
rate = 1000000
burst = 1000000
scope = "global"
[[routes]]
name = "limited"
path_prefix = "/limited"
upstream = "origin"
rate_limits = ["bench-global"]
[rate_limits.bench-reject]
key = "ip"
rate = 1
scope = "global"
[[routes]]
name = "reject"
path_prefix = "/reject"
upstream = "origin"
rate_limits = ["bench-reject"]
"""


def haproxy_rules(material):
    """HAProxy 2.6 `jwt_verify` (RS256, no cache: it verifies every request) on /jwt/."""
    return f"""  http-request set-var(txn.bearer) http_auth_bearer if {{ path_beg /jwt/ }}
  http-request deny deny_status 401 if {{ path_beg /jwt/ }} !{{ var(txn.bearer),jwt_verify("RS256","{material['public_pem']}") -m int 1 }}
"""
