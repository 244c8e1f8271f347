"""A Hugging Face hub stand-in for tests, benchmarks and the demo (issue 13): real repositories served from
directories, with the download, revision and ETag behaviour huggingface_hub and datasets rely on, request and
byte counters, and failures on demand. Standard library only.

    with HubServer() as hub:                              # 127.0.0.1, a free port
        hub.add_repo(model_dir, "acme/tiny-gpt2")         # or HubServer(root=hub_repos.hub_root())
        hub.fail("acme/missing", Failure.repo_not_found())
        env["HF_ENDPOINT"] = hub.url
        ...
        assert hub.traffic("acme/tiny-gpt2").file_bytes > 0

    python -m tests.harness.hub_server --host 10.89.0.1 --port 18080   # serve the built repos (hub_repos.py)

What it answers (huggingface_hub 2.4 / datasets 5.2, read from their sources):

- `GET /api/{models,datasets}/{repo}[/revision/{rev}]`: the repo's info with `sha` (the commit) and
  `siblings`.
- `GET /api/{type}s/{repo}/tree/{rev}[/{path}]?recursive=`: the listing HfFileSystem and datasets read
  (files with `oid`, `size` and `lfs`; folders), one page (no `Link` header).
- `POST /api/{type}s/{repo}/paths-info/{rev}` (form field `paths`, repeated): the entries that exist.
- `GET /api/{type}s/{repo}/refs`: the one branch, `main`.
- `HEAD`/`GET /{[datasets/]repo}/resolve/{rev}/{file}`: 200 with `X-Repo-Commit`, `ETag` (the git blob id),
  `Content-Length`, `Accept-Ranges`; large files are "LFS" as on the hub: `ETag`/`X-Linked-Etag` are the
  content's sha256 and `X-Linked-Size` its size. `Range: bytes=a-b` → 206. The file is sent in the answer
  itself (the hub redirects LFS files to a CDN; huggingface_hub reads the same headers either way). No xet
  headers, so clients download over plain HTTP.
- Revisions: `main` and the commit id (a hash of the repo's paths and blob ids, so it changes with the
  content) both resolve; anything else is 404 `RevisionNotFound`. A path not in the repo is 404
  `EntryNotFound`, a repo not served is 404 `RepoNotFound`.

Failures (`fail`/`clear`, switchable while running) answer the way `hf_raise_for_status` reads a response:
the exception type is chosen by the `X-Error-Code` header (RepoNotFound → RepositoryNotFoundError,
RevisionNotFound → RevisionNotFoundError, GatedRepo → GatedRepoError, EntryNotFound →
RemoteEntryNotFoundError), 401 on a repo URL without a code → RepositoryNotFoundError, and
408/429/500/502/503/504 are retried by its backoff (honouring `Retry-After`, which `Failure` sets to 0 so
tests stay fast) before they surface.

`hold(repo, file)` keeps that file's downloads in flight until released (one byte a second meanwhile), so a
test can have several clients arrive while one download is under way (the shared-cache locking test).

Every request is parsed into a `HubRequest` and counted per repo (`traffic`): requests by method, body bytes
sent, and file bytes per file (resolve GETs only), all under one lock.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from urllib.parse import parse_qs, unquote, urlsplit

# Matched on the raw (still quoted) path: huggingface_hub quotes a revision with safe="" ("refs%2Fpr%2F1").
# /{repo}/resolve/{rev}/{file}, /datasets/{repo}/resolve/{rev}/{file}
_RESOLVE = re.compile(
    r"^/(?:(?P<type>datasets|spaces)/)?(?P<repo>[^/]+(?:/[^/]+)?)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$"
)
# /api/{models,datasets,spaces}/{repo}[/{revision,tree,paths-info,refs}[/{rev}[/{path}]]]
_API = re.compile(
    r"^/api/(?P<type>models|datasets|spaces)/(?P<repo>[^/]+(?:/[^/]+)?)"
    r"(?:/(?P<action>revision|tree|paths-info|refs)(?:/(?P<rev>[^/]+)(?:/(?P<sub>.*))?)?)?$"
)
#: Stored like the hub's default .gitattributes stores them: through LFS (sha256 ETag, X-Linked-*).
LFS_SUFFIXES = (
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".ckpt",
    ".h5",
    ".msgpack",
    ".onnx",
    ".parquet",
    ".arrow",
)
LFS_MIN_SIZE = 10 * 1024 * 1024
_CHUNK = 1024 * 1024
HOLD_SECONDS = 180.0


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
    filename: str | None  # resolve: the file; tree: the folder listed (None: the root)
    action: str | None = None  # "resolve", "info", "revision", "tree", "paths-info", "refs"
    query: str = ""


def parse_request(method: str, raw_path: str) -> HubRequest:
    split = urlsplit(raw_path)
    raw = split.path

    def unq(value: str | None) -> str | None:
        return unquote(value) if value is not None else None

    if match := _RESOLVE.match(raw):
        kind = {"datasets": "dataset", "spaces": "space"}.get(match["type"] or "", "model")
        return HubRequest(
            method, unquote(raw), kind, unq(match["repo"]), unq(match["rev"]), unq(match["file"]), "resolve"
        )
    if match := _API.match(raw):
        kind = match["type"].removesuffix("s")
        action = match["action"] or "info"
        return HubRequest(
            method,
            unquote(raw),
            kind,
            unq(match["repo"]),
            unq(match["rev"]),
            unq(match["sub"]) or None,
            action,
            split.query,
        )
    return HubRequest(method, unquote(raw), None, None, None, None, None, split.query)


# ------------------------------------------------------------------------------------------ repositories


@dataclass(frozen=True)
class RepoEntry:
    """One file of a served repo, hashed the way the hub reports it."""

    path: str
    local: Path
    size: int
    blob_id: str  # git blob sha1 of what git stores: the content, or the LFS pointer for LFS files
    sha256: str | None  # LFS files only
    pointer_size: int | None

    @property
    def etag(self) -> str:
        return self.sha256 or self.blob_id


def _git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def _file_entry(local: Path, path: str) -> RepoEntry:
    size = local.stat().st_size
    if not (path.endswith(LFS_SUFFIXES) or size >= LFS_MIN_SIZE):
        return RepoEntry(path, local, size, _git_blob_id(local.read_bytes()), None, None)
    sha = hashlib.sha256()
    with local.open("rb") as f:
        while chunk := f.read(_CHUNK):
            sha.update(chunk)
    pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha.hexdigest()}\nsize {size}\n"
    return RepoEntry(path, local, size, _git_blob_id(pointer.encode()), sha.hexdigest(), len(pointer))


@dataclass(frozen=True)
class Repo:
    repo_type: str  # "model" or "dataset"
    repo_id: str
    files: dict[str, RepoEntry]
    commit: str  # what `main` resolves to

    @classmethod
    def from_dir(cls, directory: Path, repo_id: str, repo_type: str = "model") -> Repo:
        files = {}
        for local in sorted(directory.rglob("*")):
            path = local.relative_to(directory).as_posix()
            if local.is_file() and not path.startswith(".git/"):
                files[path] = _file_entry(local, path)
        digest = hashlib.sha1(usedforsecurity=False)
        for path, entry in files.items():  # sorted: the commit depends on content only
            digest.update(f"{path}\0{entry.blob_id}\n".encode())
        return cls(repo_type, repo_id, files, digest.hexdigest())

    def folders(self) -> set[str]:
        return {"/".join(p.split("/")[:i]) for p in self.files for i in range(1, p.count("/") + 1)}

    def file_json(self, entry: RepoEntry) -> dict[str, object]:
        out: dict[str, object] = {
            "type": "file",
            "oid": entry.blob_id,
            "size": entry.size,
            "path": entry.path,
        }
        if entry.sha256 is not None:
            out["lfs"] = {"oid": entry.sha256, "size": entry.size, "pointerSize": entry.pointer_size}
        return out

    def folder_json(self, path: str) -> dict[str, object]:
        oid = hashlib.sha1(f"{self.commit}:{path}".encode(), usedforsecurity=False).hexdigest()
        return {"type": "directory", "oid": oid, "size": 0, "path": path}

    def info_json(self) -> dict[str, object]:
        siblings = []
        for entry in self.files.values():
            sibling: dict[str, object] = {
                "rfilename": entry.path,
                "size": entry.size,
                "blobId": entry.blob_id,
            }
            if entry.sha256 is not None:
                sibling["lfs"] = {
                    "sha256": entry.sha256,
                    "size": entry.size,
                    "pointerSize": entry.pointer_size,
                }
            siblings.append(sibling)
        return {
            "_id": self.commit[:24],
            "id": self.repo_id,
            "author": self.repo_id.split("/")[0] if "/" in self.repo_id else None,
            "sha": self.commit,
            "private": False,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "lastModified": "2026-01-01T00:00:00.000Z",
            "createdAt": "2026-01-01T00:00:00.000Z",
            "siblings": siblings,
        }

    def listing(self, folder: str | None, recursive: bool) -> list[dict[str, object]] | None:
        """Tree entries under `folder` (None: the root); None when the folder does not exist."""
        prefix = f"{folder.strip('/')}/" if folder else ""
        folders = self.folders()
        if prefix and prefix[:-1] not in folders:
            return None

        def wanted(path: str) -> bool:
            return path.startswith(prefix) and (recursive or "/" not in path[len(prefix) :])

        out = [self.folder_json(p) for p in sorted(folders) if wanted(p)]
        return out + [self.file_json(e) for p, e in self.files.items() if wanted(p)]


@dataclass
class RepoTraffic:
    """What one repo was asked and sent (a snapshot: `HubServer.traffic`)."""

    requests: int = 0
    by_method: Counter[str] = field(default_factory=Counter)  # "HEAD", "GET", "POST"
    by_action: Counter[str] = field(default_factory=Counter)  # "resolve", "info", "tree", ...
    bytes_sent: int = 0  # every body (JSON and files)
    file_bytes: Counter[str] = field(default_factory=Counter)  # resolve GET bodies, per file

    @property
    def total_file_bytes(self) -> int:
        return sum(self.file_bytes.values())

    @property
    def resolve_heads(self) -> int:
        return self._resolve_count("HEAD")

    def copy(self) -> RepoTraffic:
        return RepoTraffic(
            self.requests,
            Counter(self.by_method),
            Counter(self.by_action),
            self.bytes_sent,
            Counter(self.file_bytes),
        )

    def _resolve_count(self, method: str) -> int:
        return self.by_action[f"resolve {method}"]

    def summary(self) -> dict[str, object]:
        return {
            "requests": self.requests,
            "by_method": dict(self.by_method),
            "by_action": dict(self.by_action),
            "bytes_sent": self.bytes_sent,
            "file_bytes": self.total_file_bytes,
        }


# ------------------------------------------------------------------------------------------------ server


def _visible_dirs(base: Path) -> list[Path]:
    """Folders not starting with a dot (a builder's half-built `.name.partial` is not a repo)."""
    if not base.is_dir():
        return []
    return sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))


class HubServer:
    """A threading HTTP server on `host` (127.0.0.1 by default; a free port unless `port`); use as a context
    manager. `root` holds repos as `models/{id}/…` and `datasets/{id}/…` (ids with or without an org)."""

    def __init__(self, root: Path | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self._lock = threading.Lock()
        # A client has the last byte of a response a moment before the handler thread counts it: snapshots
        # wait (briefly) for the requests being answered, so a test reading the counters sees them settled.
        self._settled = threading.Condition(self._lock)
        self._in_flight = 0
        self._failures: dict[str, Failure] = {}
        self._holds: dict[tuple[str, str], threading.Event] = {}
        self._repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[HubRequest] = []
        self._traffic: dict[str, RepoTraffic] = {}
        if root is not None:
            self.add_tree(root)
        self._httpd = ThreadingHTTPServer((host, port), _handler_for(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="hub-server", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    # ------------------------------------------------------------------------------------- repos

    def add_repo(self, directory: Path, repo_id: str, repo_type: str = "model") -> Repo:
        """Serve `directory` as `repo_id` (every file in it; hashed now, so large repos take a second)."""
        repo = Repo.from_dir(Path(directory), repo_id, repo_type)
        with self._lock:
            self._repos[(repo_type, repo_id)] = repo
        return repo

    def add_tree(self, root: Path) -> None:
        """Serve every repo under root/models and root/datasets: a folder holding files is a repo (`gpt2`),
        a folder holding only folders is an org (`Abirate/english_quotes`)."""
        for kind in ("model", "dataset"):
            base = Path(root) / f"{kind}s"
            for top in _visible_dirs(base):
                if any(p.is_file() for p in top.iterdir()):
                    self.add_repo(top, top.name, kind)
                else:
                    for repo_dir in _visible_dirs(top):
                        self.add_repo(repo_dir, f"{top.name}/{repo_dir.name}", kind)

    def repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        with self._lock:
            return self._repos[(repo_type, repo_id)]

    # ---------------------------------------------------------------------------------- failures

    def fail(self, repo_id: str, failure: Failure) -> None:
        """Answer every request about `repo_id` with `failure` (until `clear`)."""
        with self._lock:
            self._failures[repo_id] = failure

    def clear(self, repo_id: str) -> None:
        with self._lock:
            self._failures.pop(repo_id, None)

    def hold(self, repo_id: str, filename: str) -> threading.Event:
        """Keep every download (resolve GET) of `filename` in `repo_id` in flight until the returned Event is
        set (at most HOLD_SECONDS): the headers go out at once, then one byte a second (a client's read
        timeout is about 10 s), the rest once released. A download that lasts while other clients arrive."""
        release = threading.Event()
        with self._lock:
            self._holds[(repo_id, filename)] = release
        return release

    # ---------------------------------------------------------------------------------- counters

    def requests_for(self, repo_id: str) -> int:
        return self.traffic(repo_id).requests

    def traffic(self, repo_id: str) -> RepoTraffic:
        """What `repo_id` was asked and sent so far (once no request is being answered, or after 2 s)."""
        with self._settled:
            self._settled.wait_for(lambda: self._in_flight == 0, timeout=2.0)
            return self._traffic.get(repo_id, RepoTraffic()).copy()

    def _count(self, request: HubRequest, body_bytes: int = 0, file_bytes: int = 0) -> None:
        if request.repo_id is None:
            return
        with self._lock:
            traffic = self._traffic.setdefault(request.repo_id, RepoTraffic())
            traffic.bytes_sent += body_bytes
            if file_bytes and request.filename is not None:
                traffic.file_bytes[request.filename] += file_bytes

    # ----------------------------------------------------------------------------------- serving

    def _record(self, request: HubRequest) -> Failure | None:
        with self._lock:
            self.requests.append(request)
            if request.repo_id is None:
                return None
            traffic = self._traffic.setdefault(request.repo_id, RepoTraffic())
            traffic.requests += 1
            traffic.by_method[request.method] += 1
            if request.action is not None:
                traffic.by_action[f"{request.action} {request.method}"] += 1
            return self._failures.get(request.repo_id)

    def respond(self, handler: BaseHTTPRequestHandler, form: str = "") -> None:
        with self._settled:
            self._in_flight += 1
        try:
            self._respond(handler, form)
        finally:
            with self._settled:
                self._in_flight -= 1
                self._settled.notify_all()

    def _respond(self, handler: BaseHTTPRequestHandler, form: str) -> None:
        request = parse_request(handler.command, handler.path)
        failure = self._record(request)
        if failure is not None:
            self._send_error(
                handler, request, failure.status, failure.message, failure.error_code, failure.headers
            )
        elif request.repo_id is not None:
            self._serve_repo(handler, request, form)
        else:
            self._send_error(handler, request, 404, "Not Found")

    def _serve_repo(self, handler: BaseHTTPRequestHandler, request: HubRequest, form: str) -> None:
        assert request.repo_type is not None and request.repo_id is not None
        with self._lock:
            repo = self._repos.get((request.repo_type, request.repo_id))
        if repo is None:
            self._send_error(handler, request, 404, "Repository not found", "RepoNotFound")
            return
        if request.action == "refs":
            branch = {"name": "main", "ref": "refs/heads/main", "targetCommit": repo.commit}
            self._send_json(handler, request, {"branches": [branch], "tags": [], "converts": []})
            return
        if request.revision not in (None, "main", repo.commit):
            self._send_error(handler, request, 404, f"Invalid rev id: {request.revision}", "RevisionNotFound")
            return
        if request.action in ("info", "revision"):
            self._send_json(handler, request, repo.info_json())
        elif request.action == "tree":
            recursive = parse_qs(request.query).get("recursive", ["false"])[-1].lower() == "true"
            listing = repo.listing(request.filename, recursive)
            if listing is None:
                self._send_error(handler, request, 404, f"{request.filename} does not exist", "EntryNotFound")
            else:
                self._send_json(handler, request, listing)
        elif request.action == "paths-info":
            paths = [p.strip("/") for p in parse_qs(form).get("paths", [])]
            folders = repo.folders()
            found = [repo.file_json(repo.files[p]) for p in paths if p in repo.files]
            self._send_json(handler, request, found + [repo.folder_json(p) for p in paths if p in folders])
        elif request.action == "resolve" and request.filename in repo.files:
            self._send_file(handler, request, repo, repo.files[request.filename])
        elif request.action == "resolve":
            self._send_error(handler, request, 404, f"{request.filename} does not exist", "EntryNotFound")
        else:
            self._send_error(handler, request, 404, "Not Found")

    def _send_file(
        self, handler: BaseHTTPRequestHandler, request: HubRequest, repo: Repo, entry: RepoEntry
    ) -> None:
        start, end = 0, entry.size - 1
        status = 200
        wanted = handler.headers.get("Range")
        if wanted and (match := re.fullmatch(r"bytes=(\d*)-(\d*)", wanted.strip())):
            first, last = match.groups()
            if first:
                start, end = int(first), min(int(last), end) if last else end
            elif last:  # the last N bytes
                start = max(entry.size - int(last), 0)
            if start > end:
                handler.send_response(416)
                handler.send_header("Content-Range", f"bytes */{entry.size}")
                handler.send_header("Content-Length", "0")
                handler.end_headers()
                return
            status = 206
        length = end - start + 1
        handler.send_response(status)
        handler.send_header("Content-Type", "application/octet-stream")
        handler.send_header("Content-Length", str(length))
        handler.send_header("Accept-Ranges", "bytes")
        handler.send_header("X-Repo-Commit", repo.commit)
        handler.send_header("ETag", f'"{entry.etag}"')
        if entry.sha256 is not None:
            handler.send_header("X-Linked-Etag", f'"{entry.sha256}"')
            handler.send_header("X-Linked-Size", str(entry.size))
        if status == 206:
            handler.send_header("Content-Range", f"bytes {start}-{end}/{entry.size}")
        handler.end_headers()
        if handler.command != "GET":
            return
        with self._lock:
            hold = self._holds.get((request.repo_id or "", request.filename or ""))
        sent = 0
        try:
            with entry.local.open("rb") as f:
                deadline = time.monotonic() + HOLD_SECONDS
                while hold is not None and sent < length - 1 and time.monotonic() < deadline:
                    if hold.wait(1.0):
                        break
                    sent += handler.connection.sendfile(f, start + sent, 1)
                while sent < length:  # sendfile: 500 MB over loopback in about a second
                    n = handler.connection.sendfile(f, start + sent, length - sent)
                    if n == 0:
                        break
                    sent += n
        finally:
            self._count(request, sent, sent)

    def _send_json(self, handler: BaseHTTPRequestHandler, request: HubRequest, payload: object) -> None:
        body = json.dumps(payload).encode()
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(body)
            self._count(request, len(body))

    def _send_error(
        self,
        handler: BaseHTTPRequestHandler,
        request: HubRequest,
        status: int,
        message: str,
        error_code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        body = json.dumps({"error": message}).encode()
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
            self._count(request, len(body))

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
            form = self.rfile.read(length).decode("utf-8", "replace") if length else ""
            server.respond(self, form)

        def log_message(self, format: str, *args: object) -> None:  # quiet: tests read the counters
            pass

    return Handler


def closed_loopback_port() -> int:
    """A 127.0.0.1 port nothing listens on (bound, then released): connections are refused at once."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main(argv: list[str] | None = None) -> int:
    """Serve the project's built repos (or --root) until interrupted; prints one JSON line with the URL."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument(
        "--root", type=Path, default=None, help="models/… and datasets/… (default: build them)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="10.89.0.1 for pods of the local cluster")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    if args.root is None:
        from tests.harness.hub_repos import hub_root

        args.root = hub_root()
    server = HubServer(args.root, args.host, args.port).start()
    repos = sorted(f"{kind}:{repo_id}" for kind, repo_id in server._repos)
    print(
        json.dumps({"event": "hub_serving", "url": server.url, "root": str(args.root), "repos": repos}),
        flush=True,
    )
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
