"""A Hugging Face hub stand-in on 127.0.0.1 for real-process tests (no traffic leaves the machine).

    with HubServer() as hub:
        hub.fail("acme/missing", Failure.repo_not_found())
        env["HF_ENDPOINT"] = hub.url
        ...
        assert hub.requests_for("acme/missing") >= 1

It answers the way huggingface_hub's `hf_raise_for_status` reads a response (huggingface_hub 2.4,
utils/_http.py): the exception type is chosen by the `X-Error-Code` header (RepoNotFound →
RepositoryNotFoundError, RevisionNotFound → RevisionNotFoundError, GatedRepo → GatedRepoError, EntryNotFound →
RemoteEntryNotFoundError), 401 on a repo URL without a code → RepositoryNotFoundError, and
408/429/500/502/503/504 are retried by its backoff (honouring `Retry-After`, which `Failure` sets to 0 so
tests stay fast) before they surface.

Routing: every request is parsed into a `HubRequest` (repo type, repo id, revision, file) and counted per
repo; a repo with a configured `Failure` answers with it. Repos without one get 404 RepoNotFound for now;
serving real model files (resolve HEAD/GET with X-Repo-Commit and ETag) is meant to be added in
`_serve_repo` (issue 13).
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import unquote, urlsplit

# /{repo}/resolve/{rev}/{file}, /datasets/{repo}/resolve/{rev}/{file}, /api/models/{repo}[/revision/{rev}|...]
_RESOLVE = re.compile(
    r"^/(?:(?P<type>datasets|spaces)/)?(?P<repo>[^/]+(?:/[^/]+)?)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$"
)
_API = re.compile(
    r"^/api/(?P<type>models|datasets|spaces)/(?P<repo>[^/]+(?:/[^/]+)?)"
    r"(?:/(?:revision|tree|paths-info|refs)(?:/(?P<rev>[^/]+))?.*)?$"
)


@dataclass(frozen=True)
class Failure:
    """One way for the hub to answer a repo's requests."""

    status: int
    error_code: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    message: str = ""

    @classmethod
    def repo_not_found(cls) -> Failure:
        return cls(404, "RepoNotFound", message="Repository not found")

    @classmethod
    def revision_not_found(cls) -> Failure:
        return cls(404, "RevisionNotFound", message="Invalid rev id")

    @classmethod
    def gated(cls, status: int = 401) -> Failure:
        return cls(status, "GatedRepo", message="Access to this model is restricted")

    @classmethod
    def rate_limited(cls) -> Failure:
        return cls(429, headers={"Retry-After": "0"}, message="Too Many Requests")

    @classmethod
    def server_error(cls, status: int = 500) -> Failure:
        return cls(status, headers={"Retry-After": "0"}, message="Internal Error")


@dataclass(frozen=True)
class HubRequest:
    method: str
    path: str
    repo_type: str | None  # "model", "dataset", "space"; None when the path names no repo
    repo_id: str | None
    revision: str | None
    filename: str | None


def parse_request(method: str, raw_path: str) -> HubRequest:
    path = unquote(urlsplit(raw_path).path)
    if match := _RESOLVE.match(path):
        kind = {"datasets": "dataset", "spaces": "space"}.get(match["type"] or "", "model")
        return HubRequest(method, path, kind, match["repo"], match["rev"], match["file"])
    if match := _API.match(path):
        kind = match["type"].removesuffix("s")
        return HubRequest(method, path, kind, match["repo"], match["rev"], None)
    return HubRequest(method, path, None, None, None, None)


class HubServer:
    """A threading HTTP server on 127.0.0.1 (a free port); use as a context manager."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._failures: dict[str, Failure] = {}
        self.requests: list[HubRequest] = []
        self._per_repo: Counter[str] = Counter()
        server = self
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(server))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="hub-server", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def fail(self, repo_id: str, failure: Failure) -> None:
        """Answer every request about `repo_id` with `failure` (until `clear`)."""
        with self._lock:
            self._failures[repo_id] = failure

    def clear(self, repo_id: str) -> None:
        with self._lock:
            self._failures.pop(repo_id, None)

    def requests_for(self, repo_id: str) -> int:
        with self._lock:
            return self._per_repo[repo_id]

    # --------------------------------------------------------------------------------- serving

    def _record(self, request: HubRequest) -> Failure | None:
        with self._lock:
            self.requests.append(request)
            if request.repo_id is not None:
                self._per_repo[request.repo_id] += 1
                return self._failures.get(request.repo_id)
            return None

    def respond(self, handler: BaseHTTPRequestHandler) -> None:
        request = parse_request(handler.command, handler.path)
        failure = self._record(request)
        if failure is not None:
            self._send(handler, failure.status, failure.message, failure.error_code, failure.headers)
        elif request.repo_id is not None:
            self._serve_repo(handler, request)
        else:
            self._send(handler, 404, "Not Found")

    def _serve_repo(self, handler: BaseHTTPRequestHandler, request: HubRequest) -> None:
        """A repo with no configured failure. No files are served yet: it does not exist."""
        self._send(handler, 404, "Repository not found", "RepoNotFound")

    @staticmethod
    def _send(
        handler: BaseHTTPRequestHandler,
        status: int,
        message: str,
        error_code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        body = f'{{"error": "{message}"}}'.encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        if error_code:
            handler.send_header("X-Error-Code", error_code)
        if message:
            handler.send_header("X-Error-Message", message)
        for key, value in (headers or {}).items():
            handler.send_header(key, value)
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(body)

    # ------------------------------------------------------------------------------- lifecycle

    def start(self) -> HubServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _handler_for(server: HubServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            server.respond(self)

        def do_HEAD(self) -> None:
            server.respond(self)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            server.respond(self)

        def log_message(self, format: str, *args: object) -> None:  # quiet: tests read `requests`
            pass

    return Handler


def closed_loopback_port() -> int:
    """A 127.0.0.1 port nothing listens on (bound, then released): connections are refused at once."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
