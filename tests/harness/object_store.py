"""A real S3 server for tests (issue 14): Versity Gateway (posix backend) built by hack/objectstore/build.sh
from the Go module proxy, started on 127.0.0.1 (or, for pods of the local cluster, on the node address
10.89.0.1: the host's end of the node's veth, hack/cluster/node.sh NODE_IP) on a free port with generated
credentials and a fresh bucket.

    with ObjectStore(tmp_path / "s3") as store:     # builds (cached) and starts versitygw
        env.update(store.env())                     # FTO_S3_ACCESS_KEY_ID / FTO_S3_SECRET_ACCESS_KEY
        config["object_store"] = store.config(prefix="runs/a")
        store.stop()                                # "the store is down": connections are refused
        store.start()                               # back on the same port, with the same data

    ObjectStore(tmp_path / "s3", host=NODE_ADDRESS)     # reachable from the local cluster's pods

The bucket is a directory under the server's root (the posix backend serves each top-level directory as a
bucket), so a test can see exactly what reached the store. `object_store` is the pytest fixture.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "hack" / "objectstore" / "build.sh"
ACCESS_KEY_ENV = "FTO_S3_ACCESS_KEY_ID"
SECRET_KEY_ENV = "FTO_S3_SECRET_ACCESS_KEY"
LOOPBACK = "127.0.0.1"
#: hack/cluster/node.sh NODE_IP: the host's end of the node's veth; pods reach the host there (as the hub
#: stand-in in tests/integration/operator/test_shared_cache_cluster.py).
NODE_ADDRESS = "10.89.0.1"
#: The only addresses a test server may bind: no traffic to any other address.
ALLOWED_HOSTS = (LOOPBACK, NODE_ADDRESS)


def build() -> Path:
    """The versitygw binary (built once per version, then cached: see hack/objectstore/build.sh)."""
    out = subprocess.run([str(BUILD)], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


def free_port(host: str = LOOPBACK) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class ObjectStore:
    def __init__(self, root: Path, bucket: str = "checkpoints", host: str = LOOPBACK):
        if host not in ALLOWED_HOSTS:
            raise ValueError(f"the test object store binds only {' or '.join(ALLOWED_HOSTS)}, not {host}")
        self.root = root
        self.bucket = bucket
        self.host = host
        self.port = free_port(host)
        self.access_key = "fto" + secrets.token_hex(8)
        self.secret_key = secrets.token_hex(20)
        self.binary: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = root.parent / f"{root.name}.versitygw.log"
        # The server's own access log (one line per request: operation, key, status): what the clients did,
        # counted by the server rather than by the code under test.
        self.access_log_path = root.parent / f"{root.name}.access.log"

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def bucket_dir(self) -> Path:
        return self.root / self.bucket

    def start(self) -> None:
        """Start (or restart) the server on the same port and data; returns once it answers."""
        assert self.proc is None, "already running"
        if self.binary is None:
            self.binary = build()
        self.bucket_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            str(self.binary),
            "--access",
            self.access_key,
            "--secret",
            self.secret_key,
            "--port",
            f"{self.host}:{self.port}",
            "--access-log",
            str(self.access_log_path),
            "posix",
            str(self.root),
        ]
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"versitygw exited {self.proc.returncode}:\n{self.log_path.read_text()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"versitygw did not listen on {self.port} within 15 s")

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL): clients get connection refused until start()."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def env(self) -> dict[str, str]:
        """The credentials as the trainer reads them (in a pod: env from the Secret)."""
        return {ACCESS_KEY_ENV: self.access_key, SECRET_KEY_ENV: self.secret_key}

    def config(self, prefix: str = "run") -> dict[str, Any]:
        """The trainer config's `object_store` section for this server."""
        return {
            "bucket": self.bucket,
            "prefix": prefix,
            "endpoint": self.endpoint,
            "region": "us-east-1",
            "path_style": True,
        }

    def job_spec(self, secret_name: str, prefix: str = "") -> dict[str, Any]:
        """A FineTuneJob's spec.checkpoint.objectStore for this server (the key pair in Secret `secret_name`,
        see `secret`); each run's checkpoints go under <prefix>/runs/<job uid>/."""
        spec: dict[str, Any] = {
            "bucket": self.bucket,
            "endpoint": self.endpoint,
            "region": "us-east-1",
            "pathStyle": True,
            "credentials": {"secretName": secret_name},
        }
        if prefix:
            spec["prefix"] = prefix
        return spec

    def secret(self, name: str) -> dict[str, Any]:
        """The Secret that `job_spec` names, with the default keys (accessKeyId, secretAccessKey)."""
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name},
            "stringData": {"accessKeyId": self.access_key, "secretAccessKey": self.secret_key},
        }

    def objects(self, prefix: str = "") -> dict[str, int]:
        """Every stored object under `prefix` (key -> size), read from the server's directory."""
        base = self.bucket_dir
        return {
            str(p.relative_to(base)): p.stat().st_size
            for p in sorted(base.rglob("*"))
            if p.is_file() and str(p.relative_to(base)).startswith(prefix)
        }

    def committed_steps(self, prefix: str) -> list[int]:
        """Steps of the checkpoints directly under `prefix` whose remote commit marker is stored."""
        found = (
            re.fullmatch(rf"{re.escape(prefix)}/checkpoint-(\d+)/COMMITTED\.json", key)
            for key in self.objects(prefix)
        )
        return sorted(int(m[1]) for m in found if m)

    def requests(self) -> list[tuple[str, str, int]]:
        """Every request the server logged so far, as (operation, key, HTTP status), e.g.
        ("GetObject", "models/tiny/config.json", 200); "-" as the key of bucket-level requests (listings)."""
        if not self.access_log_path.exists():
            return []
        out = []
        for line in self.access_log_path.read_text().splitlines():
            # S3 access log format: ... [time +zone] remote requester request-id s3_OP KEY URI STATUS ...
            _, bracket, rest = line.partition("] ")
            fields = rest.split()
            if not bracket or len(fields) < 7 or not fields[3].startswith("s3_"):
                continue
            out.append((fields[3].removeprefix("s3_"), fields[4], int(fields[6])))
        return out

    def __enter__(self) -> ObjectStore:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


@pytest.fixture
def object_store(tmp_path: Path) -> Iterator[ObjectStore]:
    """A fresh server and bucket for one test, on 127.0.0.1; stopped and removed afterwards."""
    store = ObjectStore(tmp_path / "s3")
    with store:
        yield store
    shutil.rmtree(store.root, ignore_errors=True)
