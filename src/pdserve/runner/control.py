"""The supervisor's control socket: `pdserve scale` from another shell.

A small HTTP server on 127.0.0.1 inside the process that owns the children
(only it can start and stop them cleanly). POST /scale {"pool", "replicas"}
answers when the pool has its new size; GET /status returns the summary.
Every request carries `Authorization: Bearer <token>`: loopback is open to every local
user, the state folder's token file (mode 0600, new each run) only to the service's owner.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from pdserve import json_body, wire
from pdserve.errors import UserError
from pdserve.runner.service import LocalService

TOKEN_FILE = "control-token"


def write_token(state_dir: Path) -> str:
    """A fresh token, created owner-only: written first and chmod-ed after, it could be
    read in between; an old file is removed since O_CREAT keeps an existing file's mode."""
    path = state_dir / TOKEN_FILE
    path.unlink(missing_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(token)
    return token


def read_token(state_dir: Path) -> str:
    try:
        return (state_dir / TOKEN_FILE).read_text().strip()
    except OSError as err:
        why = f"cannot read the service's control token {err.filename}: {err.strerror}"
        raise UserError(why) from None


def serve(service: LocalService) -> ThreadingHTTPServer:
    token = write_token(service.state.path)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # quiet
            return

        def _reply(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _fail(self, status: int, message: str) -> None:
            self._reply(status, wire.error_body(message, status))

        def _authorized(self) -> bool:
            """Constant-time comparison: the token must not leak by timing."""
            given = self.headers.get("authorization", "")
            if hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return True
            self._fail(401, "missing or wrong control token (Authorization: Bearer)")
            return False

        def do_GET(self) -> None:
            if self._authorized():
                self._reply(200, service.summary())

        def do_POST(self) -> None:
            if not self._authorized():
                return
            if self.path != "/scale":
                self._fail(404, f"unknown path {self.path}")
                return
            try:
                body = json_body.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
                steps: list[str] = []
                service.scale(str(body["pool"]), int(body["replicas"]), steps.append)
            except (ValueError, KeyError, TypeError) as err:
                self._fail(400, str(err))
                return
            except Exception as err:
                self._fail(500, f"{type(err).__name__}: {err}")
                return
            self._reply(200, {"steps": steps, **service.summary()})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="control", daemon=True).start()
    return server


def request(
    port: int, method: str, path: str, body: dict[str, Any] | None = None, *, token: str
) -> dict[str, Any]:
    """Call a supervisor's control server; scaling vLLM engines can take minutes."""
    import httpx

    auth = {"authorization": f"Bearer {token}"}
    url = f"http://127.0.0.1:{port}{path}"
    try:
        resp = httpx.request(method, url, json=body, headers=auth, timeout=1800)
        data: dict[str, Any] = resp.json()
    except (httpx.HTTPError, ValueError) as err:
        raise RuntimeError(f"the service's control port {port} did not answer: {err}") from None
    if resp.status_code != 200:
        raise RuntimeError(_message(data) or resp.text)
    return data


def _message(data: dict[str, Any]) -> str | None:
    """The message of an error body in vLLM's shape (wire.error_body)."""
    error = data.get("error")
    return str(error.get("message")) if isinstance(error, dict) else None
