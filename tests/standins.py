"""Local HTTP servers standing in for the Alibaba Cloud services that model staging talks to: an
ECS instance's metadata service and an OSS bucket. Each runs in a thread of the test process and
records the requests it got (header names in lower case)."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse
from xml.sax.saxutils import escape

ROLE_CREDENTIALS = {
    "AccessKeyId": "STS.FAKEroleKEYidFORtests",
    "AccessKeySecret": "FAKEroleSECRETforTESTSonly000111",
    "SecurityToken": "FAKEroleSTStokenFORtests.zyxwvut",
}


class _StandIn:
    """A ThreadingHTTPServer on 127.0.0.1 (a free port) that serves ``self.handle``."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                headers = {name.lower(): value for name, value in self.headers.items()}
                standin.requests.append({"method": self.command, "path": self.path, "headers": headers})
                status, headers, body = standin.handle(self.command, self.path, self.headers)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                if "Content-Length" not in headers:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_PUT = do_HEAD = _any

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        # A short poll: shutdown() waits for the loop to see it.
        threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True).start()

    def handle(self, method: str, path: str, headers) -> tuple[int, dict[str, str], bytes]:  # pragma: no cover
        raise NotImplementedError

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class MetadataStandIn(_StandIn):
    """The metadata service of an instance with a RAM role, in one access mode:

    - ``hardened``: every GET needs a token from ``PUT /latest/api/token`` (HttpTokens=required);
    - ``normal``: tokens are granted and honoured, but GETs work without one too;
    - ``no-token-api``: a service that has no token API (PUT answers 404); plain GETs only.
    """

    def __init__(self, mode: str = "hardened", region: str = "cn-standin", role: str = "standin-role",
                 credentials: dict | None = None):
        self.mode, self.region, self.role = mode, region, role
        self.credentials = dict(credentials or ROLE_CREDENTIALS)
        self.tokens: list[str] = []
        super().__init__()

    def handle(self, method, path, headers):
        if method == "PUT" and path == "/latest/api/token":
            if self.mode == "no-token-api":
                return 404, {}, b"not found"
            ttl = headers.get("X-aliyun-ecs-metadata-token-ttl-seconds", "")
            if not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
                return 400, {}, b"bad ttl"
            self.tokens.append(f"token-{len(self.tokens)}")
            return 200, {}, self.tokens[-1].encode()
        if method != "GET" or not path.startswith("/latest/meta-data/"):
            return 404, {}, b"not found"
        if self.mode == "hardened" and headers.get("X-aliyun-ecs-metadata-token") not in self.tokens:
            return 401, {}, b"token required"
        item = path.removeprefix("/latest/meta-data/")
        if item == "region-id":
            return 200, {}, self.region.encode()
        if item == "ram/security-credentials/":
            return 200, {}, self.role.encode()
        if item == f"ram/security-credentials/{self.role}":
            doc = {"Code": "Success", **self.credentials, "LastUpdated": _iso(time.time()),
                   "Expiration": _iso(time.time() + 6 * 3600)}
            return 200, {}, json.dumps(doc).encode()
        return 404, {}, b"not found"


class OssStandIn(_StandIn):
    """One OSS bucket whose objects are the files under ``root`` (keys relative to it), reached
    path-style (``http://127.0.0.1:port/bucket/key``, as oss2 addresses an IP endpoint)."""

    def __init__(self, root: Path, bucket: str = "bucket"):
        self.root, self.bucket = Path(root), bucket
        super().__init__()

    def handle(self, method, path, headers):
        url = urlparse(path)
        bucket, _, key = url.path.lstrip("/").partition("/")
        if bucket != self.bucket:
            return 404, {}, b"NoSuchBucket"
        if not key and method == "GET":
            return self._list(parse_qs(url.query))
        f = self.root / unquote(key)
        if not f.is_file():
            return 404, {"Content-Type": "application/xml"}, b"<Error><Code>NoSuchKey</Code></Error>"
        data = f.read_bytes()
        meta = {"ETag": f'"{hashlib.md5(data).hexdigest().upper()}"', "x-oss-object-type": "Normal",
                "Last-Modified": formatdate(f.stat().st_mtime, usegmt=True), "Content-Length": str(len(data))}
        return 200, meta, data

    def _list(self, query: dict) -> tuple[int, dict[str, str], bytes]:
        prefix = query.get("prefix", [""])[0]
        keys = sorted(p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file())
        contents = "".join(
            f"<Contents><Key>{escape(k)}</Key><LastModified>2026-01-01T00:00:00.000Z</LastModified>"
            f"<ETag>\"0\"</ETag><Type>Normal</Type><Size>{(self.root / k).stat().st_size}</Size>"
            "<StorageClass>Standard</StorageClass></Contents>"
            for k in keys if k.startswith(prefix))
        body = (f"<?xml version=\"1.0\" encoding=\"UTF-8\"?><ListBucketResult><Name>{self.bucket}</Name>"
                f"<Prefix>{escape(prefix)}</Prefix><Marker></Marker><MaxKeys>1000</MaxKeys><Delimiter></Delimiter>"
                f"<IsTruncated>false</IsTruncated>{contents}</ListBucketResult>")
        return 200, {"Content-Type": "application/xml"}, body.encode()


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
