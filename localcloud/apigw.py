"""API Gateway (REST, Lambda proxy) on the local cloud: a real HTTP server on 127.0.0.1 per deployed API.

Each request becomes the API Gateway proxy event (payload format 1.0) for the function the template routes it
to; the function's answer becomes the HTTP response. Paths are served under the stage, as API Gateway does:
http://127.0.0.1:PORT/STAGE/path. Differences from AWS, on purpose: an unknown route answers 404 with the routes
it knows (API Gateway answers 403 "Missing Authentication Token"); no 29 s integration timeout (the function's
own timeout applies); responses are buffered, as with a REST API and a buffered Lambda response.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
import time
import uuid
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from localcloud.deployer import RestApi, Route
from localcloud.runtime import LambdaRuntime

log = logging.getLogger("localcloud.api")
MAX_PAYLOAD = 10 * 1024 * 1024  # API Gateway's request payload limit


def _compile(path: str) -> re.Pattern[str]:
    parts = []
    for seg in path.strip("/").split("/"):
        if seg.endswith("+}"):
            parts.append(f"(?P<{seg[1:-2]}>.+)")
        elif seg.startswith("{"):
            parts.append(f"(?P<{seg[1:-1]}>[^/]+)")
        else:
            parts.append(re.escape(seg))
    return re.compile("^/" + "/".join(parts) + "/?$" if parts != [""] else "^/$")


class LocalRestApi:
    """One API's routes and the HTTP server that serves them."""

    def __init__(
        self, api: RestApi, runtime: LambdaRuntime, account_id: str, api_keys: set[str] | None = None
    ):
        self.api = api
        self.runtime = runtime
        self.account_id = account_id
        self.api_keys = api_keys or set()
        self._routes = [(r, _compile(r.path)) for r in api.routes]
        self.server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/{self.api.stage}"

    def start(self, port: int = 0) -> str:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt: str, *args: Any) -> None:
                log.debug("%s " + fmt, self.address_string(), *args)

            def _serve(self) -> None:
                outer.handle(self)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _serve

            def __getattr__(self, name: str) -> Any:
                # Any other method (TRACE, QUERY, ...) gets the router's answer too, as API Gateway answers
                # it, rather than http.server's 501.
                if name.startswith("do_"):
                    return self._serve
                raise AttributeError(name)

        try:
            self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        except OSError as exc:
            raise OSError(f"cannot serve the API on 127.0.0.1:{port}: {exc.strerror}") from None
        self.server.daemon_threads = True
        self._thread = threading.Thread(
            target=self.server.serve_forever, name=f"api-{self.api.api_id}", daemon=True
        )
        self._thread.start()
        return self.url

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]] | None:
        for route, pattern in self._routes:
            m = pattern.match(path)
            if m and route.method in (method, "ANY"):
                return route, {k: unquote(v) for k, v in m.groupdict().items()}
        return None

    def handle(self, req: BaseHTTPRequestHandler) -> None:
        url = urlsplit(req.path)
        prefix = f"/{self.api.stage}"
        if not (url.path == prefix or url.path.startswith(prefix + "/")):
            return self._reply(req, 404, {"message": f"not found: the API is served under {prefix}/"})
        path = url.path[len(prefix) :] or "/"
        length = int(req.headers.get("Content-Length") or 0)
        if length > MAX_PAYLOAD:
            return self._reply(req, 413, {"message": "Request Too Long"})
        body = req.rfile.read(length) if length else b""
        found = self.match(req.command, path)
        if found is None:
            known = sorted({f"{r.method} {r.path}" for r in self.api.routes})
            return self._reply(req, 404, {"message": f"no route for {req.command} {path}", "routes": known})
        route, path_params = found
        if (route.method, route.path) in self.api.api_key_required:
            if req.headers.get("x-api-key") not in self.api_keys:
                return self._reply(req, 403, {"message": "Forbidden"})
        event = self._event(req, route, path, path_params, url.query, body)
        started = time.monotonic()
        result = self.runtime.invoke(route.function, event)
        log.info(
            "%s %s -> %s (%.0f ms)", req.command, path, route.function, 1000 * (time.monotonic() - started)
        )
        if result.errored:
            log.error("function %s failed: %s", route.function, json.dumps(result.payload)[:1000])
            return self._reply(req, 502, {"message": "Internal server error"})
        try:
            status, headers, payload = self._response(result.payload)
        except (TypeError, ValueError, KeyError) as exc:
            log.error("function %s returned a malformed proxy response: %s", route.function, exc)
            return self._reply(req, 502, {"message": "Internal server error"})
        self._send(req, status, headers, payload)

    def _event(self, req, route: Route, path: str, params: dict[str, str], query: str, body: bytes) -> dict:
        multi_q = parse_qs(query, keep_blank_values=True)
        headers: dict[str, str] = {}
        multi_h: dict[str, list[str]] = {}
        for k, v in req.headers.items():
            headers[k] = v
            multi_h.setdefault(k, []).append(v)
        try:
            text, is_b64 = body.decode("utf-8"), False
        except UnicodeDecodeError:
            text, is_b64 = base64.b64encode(body).decode(), True
        request_id = str(uuid.uuid4())
        return {
            "resource": route.path,
            "path": path,
            "httpMethod": req.command,
            "headers": headers or None,
            "multiValueHeaders": multi_h or None,
            "queryStringParameters": {k: v[-1] for k, v in multi_q.items()} or None,
            "multiValueQueryStringParameters": multi_q or None,
            "pathParameters": params or None,
            "stageVariables": None,
            "requestContext": {
                "resourcePath": route.path,
                "httpMethod": req.command,
                "path": f"/{self.api.stage}{path}",
                "stage": self.api.stage,
                "requestId": request_id,
                "extendedRequestId": request_id,
                "accountId": self.account_id,
                "apiId": self.api.api_id,
                "protocol": "HTTP/1.1",
                "requestTimeEpoch": int(time.time() * 1000),
                "identity": {"sourceIp": req.client_address[0], "userAgent": req.headers.get("User-Agent")},
            },
            "body": text if body else None,
            "isBase64Encoded": is_b64,
        }

    @staticmethod
    def _response(payload: Any) -> tuple[int, list[tuple[str, str]], bytes]:
        if not isinstance(payload, dict) or "statusCode" not in payload:
            raise ValueError("not a proxy response (no statusCode)")
        status = int(payload["statusCode"])
        headers = [(k, str(v)) for k, v in (payload.get("headers") or {}).items()]
        for k, values in (payload.get("multiValueHeaders") or {}).items():
            headers += [(k, str(v)) for v in values if (k, str(v)) not in headers]
        body = payload.get("body") or ""
        data = base64.b64decode(body) if payload.get("isBase64Encoded") else str(body).encode()
        return status, headers, data

    def _reply(self, req: BaseHTTPRequestHandler, status: int, body: dict[str, Any]) -> None:
        self._send(req, status, [("Content-Type", "application/json")], json.dumps(body).encode())

    @staticmethod
    def _send(req: BaseHTTPRequestHandler, status: int, headers: list[tuple[str, str]], data: bytes) -> None:
        try:
            req.send_response(
                status, HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else ""
            )
            names = {k.lower() for k, _ in headers}
            for k, v in headers:
                if k.lower() not in ("content-length", "connection", "transfer-encoding"):
                    req.send_header(k, v)
            if "content-type" not in names:
                req.send_header("Content-Type", "application/json")
            req.send_header("Content-Length", str(len(data)))
            req.end_headers()
            if req.command != "HEAD":
                req.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
