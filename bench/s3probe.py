#!/usr/bin/env python3
"""Per-request costs of an S3 endpoint (stdlib only): latency and the server's CPU.

Sends one kind of request at a time, one after the other on one keep-alive HTTP/1.1
connection (so the latency is the endpoint's, not a queue's), and reports for each kind
the median, 10th and 90th percentile latency and, when --pids is given, the CPU time
(user + system, /proc/PID/stat) those processes spent per request: for a Garage cluster,
the pids of its nodes, so the figure is the whole cluster's CPU per request.

  s3probe.py [--n N] [--pids "P1 P2 P3"] [--list-prefix P] [--get-key K] [--json]
             [--size BYTES ...] BUCKET SCRATCH_PREFIX

Kinds (in this order):
  put-<size>  PutObject of <size> random bytes under SCRATCH_PREFIX/put-<size>/<i>, with
              three x-amz-meta-* headers like filesync's (kind, mtime, mode)
  head        HeadObject of the objects the first put made
  list-1000   ListObjectsV2 pages of up to 1000 keys (--list-prefix: a prefix that holds
              at least N x 1000 keys gives N full pages; pages wrap around at its end)
  get         GetObject of --get-key (e.g. a filesync client's index), whole body read
  delete      DeleteObject of the objects the puts made (cleans up after itself)

Credentials, endpoint and region from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_ENDPOINT (http://HOST:PORT) and AWS_REGION, as filesync reads them. Requests are signed
with AWS Signature V4, path-style, payload hash included (as object_store does).
"""

import argparse
import datetime
import hashlib
import hmac
import http.client
import json
import os
import statistics
import sys
import time
import urllib.parse
import xml.etree.ElementTree as ET

CLK = os.sysconf("SC_CLK_TCK")


def cpu_ticks(pids):
    t = 0
    for p in pids:
        with open(f"/proc/{p}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        t += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return t


def quote(s, safe="/"):
    return urllib.parse.quote(s, safe=safe + "-_.~")


class S3:
    def __init__(self, endpoint, region, key_id, secret):
        u = urllib.parse.urlparse(endpoint)
        self.host = u.netloc
        self.conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=60)
        self.region, self.key_id, self.secret = region, key_id, secret

    def _sign(self, method, path, query, headers, payload_hash):
        now = datetime.datetime.now(datetime.timezone.utc)
        amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
        headers = dict(headers)
        headers.update({"host": self.host, "x-amz-date": amz_date, "x-amz-content-sha256": payload_hash})
        names = sorted(k.lower() for k in headers)
        lower = {k.lower(): str(v).strip() for k, v in headers.items()}
        canon_headers = "".join(f"{k}:{lower[k]}\n" for k in names)
        signed = ";".join(names)
        canon_query = "&".join(f"{quote(k, '')}={quote(v, '')}" for k, v in sorted(query.items()))
        creq = "\n".join([method, quote(path), canon_query, canon_headers, signed, payload_hash])
        scope = f"{day}/{self.region}/s3/aws4_request"
        sts = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(creq.encode()).hexdigest()])
        k = ("AWS4" + self.secret).encode()
        for part in (day, self.region, "s3", "aws4_request"):
            k = hmac.new(k, part.encode(), hashlib.sha256).digest()
        sig = hmac.new(k, sts.encode(), hashlib.sha256).hexdigest()
        headers["Authorization"] = (f"AWS4-HMAC-SHA256 Credential={self.key_id}/{scope}, "
                                    f"SignedHeaders={signed}, Signature={sig}")
        del headers["host"]
        return headers, canon_query

    def request(self, method, path, query=None, body=b"", headers=None):
        query = query or {}
        h, qs = self._sign(method, path, query, headers or {}, hashlib.sha256(body).hexdigest())
        url = quote(path) + ("?" + qs if qs else "")
        self.conn.request(method, url, body=body or None, headers=h)
        r = self.conn.getresponse()
        data = r.read()
        if r.status >= 300:
            raise RuntimeError(f"{method} {path} {query}: HTTP {r.status}: {data[:300]!r}")
        return data


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bucket")
    ap.add_argument("scratch", help="key prefix for the objects this probe puts (and deletes)")
    ap.add_argument("--n", type=int, default=200, help="requests of each kind (default 200)")
    ap.add_argument("--size", type=int, nargs="+", default=[4096], help="object sizes to put (default 4096)")
    ap.add_argument("--pids", default="", help="space-separated pids whose CPU to count")
    ap.add_argument("--list-prefix", default="", help="prefix to list (default: the first put's objects)")
    ap.add_argument("--get-key", default="", help="object to GET (default: skip)")
    ap.add_argument("--json", action="store_true", help="print one JSON object per kind")
    a = ap.parse_args()
    env = os.environ
    s3 = S3(env["AWS_ENDPOINT"], env.get("AWS_REGION", "us-east-1"), env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"])
    pids = [int(p) for p in a.pids.split()]
    b = "/" + a.bucket
    scratch = a.scratch.strip("/")
    results = []

    def measure(kind, fn, n, extra=None):
        lat = []
        c0, w0 = cpu_ticks(pids) if pids else 0, time.monotonic()
        for i in range(n):
            t0 = time.monotonic()
            fn(i)
            lat.append((time.monotonic() - t0) * 1e3)
        w1 = time.monotonic()
        c1 = cpu_ticks(pids) if pids else 0
        q = statistics.quantiles(lat, n=10) if len(lat) > 1 else lat * 9
        r = {"kind": kind, "n": n, "median_ms": statistics.median(lat), "p10_ms": q[0], "p90_ms": q[8],
             "per_s_sequential": n / (w1 - w0),
             "server_cpu_ms": (c1 - c0) * 1000 / CLK / n if pids else None}
        r.update(extra or {})
        results.append(r)

    meta = {"x-amz-meta-filesync-kind": "file", "x-amz-meta-filesync-mtime": "1700000000.000000000",
            "x-amz-meta-filesync-mode": "644"}
    s3.request("GET", b, {"list-type": "2", "max-keys": "1"})  # connect, warm up
    keys = []
    for size in a.size:
        body = os.urandom(size)
        prefix = f"{scratch}/put-{size}"
        ks = [f"{prefix}/{i:06d}" for i in range(a.n)]
        keys += ks
        measure(f"put-{size}", lambda i: s3.request("PUT", f"{b}/{ks[i]}", body=body, headers=meta), a.n)
    first = [k for k in keys if k.startswith(f"{scratch}/put-{a.size[0]}/")]
    measure("head", lambda i: s3.request("HEAD", f"{b}/{first[i % len(first)]}"), a.n)

    list_prefix = a.list_prefix.strip("/") + "/" if a.list_prefix else f"{scratch}/put-{a.size[0]}/"
    state = {"token": None, "keys": 0}

    def list_page(i):
        q = {"list-type": "2", "max-keys": "1000", "prefix": list_prefix}
        if state["token"]:
            q["continuation-token"] = state["token"]
        root = ET.fromstring(s3.request("GET", b, q))
        ns = root.tag.split("}")[0] + "}" if root.tag.startswith("{") else ""
        state["keys"] += len(root.findall(f"{ns}Contents"))
        tok = root.find(f"{ns}NextContinuationToken")
        state["token"] = tok.text if tok is not None and tok.text else None

    nlist = max(1, a.n // 10)
    measure("list-1000", list_page, nlist)
    results[-1]["keys_per_page"] = state["keys"] / nlist
    if a.get_key:
        got = {"bytes": 0}

        def get(i):
            got["bytes"] = len(s3.request("GET", f"{b}/{a.get_key}"))

        measure("get", get, max(1, a.n // 10))
        results[-1]["bytes"] = got["bytes"]
    measure("delete", lambda i: s3.request("DELETE", f"{b}/{keys[i]}"), len(keys))

    for r in results:
        if a.json:
            print(json.dumps(r))
        else:
            cpu = "" if r["server_cpu_ms"] is None else f", server CPU {r['server_cpu_ms']:.2f} ms/request"
            extra = "".join(f", {k} {r[k]:.0f}" for k in ("keys_per_page", "bytes") if k in r)
            print(f"{r['kind']:>10}: n {r['n']}, median {r['median_ms']:.2f} ms (p10 {r['p10_ms']:.2f}, "
                  f"p90 {r['p90_ms']:.2f}), {r['per_s_sequential']:.0f}/s sequential{cpu}{extra}")


if __name__ == "__main__":
    sys.exit(main())
