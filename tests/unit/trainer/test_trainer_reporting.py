"""Progress reporting never blocks or stops training; the status patch has the agreed shape."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

from finetune_api.contract import TerminationMessage
from finetune_api.trainer_config import JobRef
from finetune_trainer.logs import TerminationWriter
from finetune_trainer.reporting import StatusReporter, TrainerMetrics


def test_updates_coalesce_and_never_block() -> None:
    sent: list[dict[str, Any]] = []
    gate = threading.Event()

    def patch(body: dict[str, Any]) -> None:
        gate.wait(5)
        sent.append(body)

    reporter = StatusReporter(patch, min_interval=0.0)
    t0 = time.monotonic()
    for step in range(1000):
        reporter.update({"step": step, "progress": f"{step}/1000"})
    assert time.monotonic() - t0 < 0.5  # the API being slow costs training nothing
    gate.set()
    reporter.close(timeout=5)
    assert sent[-1] == {"step": 999, "progress": "999/1000"}
    assert len(sent) <= 3  # coalesced, not one request per step


def test_failures_are_logged_and_retried_with_newest_values(capsys: Any) -> None:
    calls: list[dict[str, Any]] = []

    def patch(body: dict[str, Any]) -> None:
        calls.append(body)
        if len(calls) == 1:
            raise ConnectionError("apiserver unreachable")

    reporter = StatusReporter(patch, min_interval=0.01)
    reporter.update({"step": 1, "lastCheckpointStep": 1})
    deadline = time.monotonic() + 0.5
    while not calls and time.monotonic() < deadline:
        time.sleep(0.005)
    reporter.update({"step": 2})
    reporter.close(timeout=5)
    assert calls[0] == {"step": 1, "lastCheckpointStep": 1}
    assert calls[-1] == {"step": 2, "lastCheckpointStep": 1}  # the failed checkpoint info is not lost
    assert "status_report_failed" in capsys.readouterr().err


def test_close_is_bounded_when_the_api_hangs() -> None:
    reporter = StatusReporter(lambda body: time.sleep(30), min_interval=0.0)
    reporter.update({"step": 1})
    time.sleep(0.05)
    t0 = time.monotonic()
    reporter.close(timeout=0.2)
    assert time.monotonic() - t0 < 1.0


def test_disabled_reporter_is_a_no_op() -> None:
    reporter = StatusReporter(None)
    reporter.update({"step": 1})
    reporter.close()
    assert not reporter.enabled


def test_kubernetes_patcher_sends_merge_patch_to_status_subresource(monkeypatch: Any) -> None:
    """Against a local HTTP server standing in for the apiserver (in-cluster config faked)."""
    from kubernetes import client, config

    seen: dict[str, Any] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_PATCH(self) -> None:
            length = int(self.headers["Content-Length"])
            seen.update(
                path=self.path,
                content_type=self.headers["Content-Type"],
                auth=self.headers.get("Authorization"),
                body=json.loads(self.rfile.read(length)),
            )
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def fake_incluster() -> None:
        cfg = client.Configuration()
        cfg.host = f"http://127.0.0.1:{server.server_port}"
        cfg.api_key = {"authorization": "Bearer sa-token"}
        client.Configuration.set_default(cfg)

    monkeypatch.setattr(config, "load_incluster_config", fake_incluster)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")  # what a pod has (the check before the import)
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(server.server_port))
    from finetune_trainer.reporting import kubernetes_patcher

    try:
        patch = kubernetes_patcher(JobRef(namespace="team-a", name="tiny"))
        patch({"step": 3, "lastCheckpoint": {"step": 2, "bytes": 10}})
    finally:
        server.shutdown()
        client.Configuration.set_default(client.Configuration())
    assert seen["path"] == "/apis/finetune.dev/v1alpha1/namespaces/team-a/finetunejobs/tiny/status"
    assert seen["content_type"] == "application/merge-patch+json"
    assert seen["body"] == {"status": {"step": 3, "lastCheckpoint": {"step": 2, "bytes": 10}}}
    assert seen["auth"] == "Bearer sa-token"


def test_kubernetes_client_is_imported_by_the_first_patch_not_at_start_up() -> None:
    """Importing the kubernetes client takes about a second: outside a pod the patcher is refused at once
    without it, inside one it is imported by the first patch (in the reporter thread), not when built."""
    script = """
import os, sys
from finetune_api.trainer_config import JobRef
from finetune_trainer.reporting import kubernetes_event_poster, kubernetes_patcher
job = JobRef(namespace="team-a", name="tiny")
for key in ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"):
    os.environ.pop(key, None)
try:
    kubernetes_patcher(job)
    raise SystemExit("built outside a cluster")
except RuntimeError as error:
    assert "not in a cluster" in str(error), error
assert "kubernetes" not in sys.modules
os.environ.update(KUBERNETES_SERVICE_HOST="127.0.0.1", KUBERNETES_SERVICE_PORT="1")
patch, post = kubernetes_patcher(job), kubernetes_event_poster(job)
assert "kubernetes" not in sys.modules
try:
    patch({"step": 1})  # no service account token here: the in-cluster config fails, after the import
except Exception as error:
    print(type(error).__name__)
assert "kubernetes" in sys.modules
print("ok")
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["ConfigException", "ok"], done.stdout


def test_metrics_are_prefixed() -> None:
    from prometheus_client import generate_latest

    metrics = TrainerMetrics(port=0)
    metrics.step.set(7)
    metrics.save_seconds.observe(0.2)
    text = generate_latest(metrics.registry).decode()
    names = {line.split(" ")[2] for line in text.splitlines() if line.startswith("# TYPE")}
    assert names and all(name.startswith("finetune_trainer_") for name in names)
    assert "finetune_trainer_step 7.0" in text


def test_termination_writer_first_message_wins(tmp_path: Any) -> None:
    path = tmp_path / "term"
    writer = TerminationWriter(str(path))
    writer.write(TerminationMessage(reason="Preempted", step=4, checkpoint="checkpoint-4"))
    writer.write(TerminationMessage(reason="Error", message="later"))
    assert json.loads(path.read_text()) == {"reason": "Preempted", "step": 4, "checkpoint": "checkpoint-4"}
    TerminationWriter(None).write(TerminationMessage(reason="Completed"))  # no path: nothing, no error


class _Rejected(Exception):
    """What kubernetes.client raises for a 422: an exception carrying the HTTP status."""

    status = 422


def test_non_finite_values_are_sent_as_null_and_a_rejected_body_is_never_resent() -> None:
    calls: list[dict[str, Any]] = []

    def patch(body: dict[str, Any]) -> None:
        calls.append(body)
        if body.get("lastCheckpointStep") == "bad":
            raise _Rejected("Unprocessable Entity")

    reporter = StatusReporter(patch, min_interval=0.0)
    reporter.update({"step": 1, "loss": float("nan"), "lastCheckpoint": {"saveSeconds": float("inf")}})
    reporter.update({"lastCheckpointStep": "bad"})
    deadline = time.monotonic() + 5
    while reporter.rejected == 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    reporter.update({"step": 2})
    reporter.close(timeout=5)
    assert json.dumps(calls[0], allow_nan=False)  # valid JSON: no NaN/Infinity anywhere
    assert calls[0]["loss"] is None and calls[0]["lastCheckpoint"] == {"saveSeconds": None}
    assert reporter.rejected == 1
    assert calls[-1] == {"step": 2}  # the rejected field is not merged into later patches
    assert all(c.get("lastCheckpointStep") != "bad" for c in calls[calls.index({"step": 2}) :])


def test_progress_reports_nan_loss_as_null_and_one_event() -> None:
    from pathlib import Path

    from finetune_trainer.callbacks import ProgressCallback, RunState
    from transformers import TrainerControl, TrainerState

    sent: list[dict[str, Any]] = []
    events: list[tuple[str, str, str]] = []
    reporter = StatusReporter(sent.append, min_interval=0.0, post_event=lambda *e: events.append(e))
    callback = ProgressCallback(RunState(output_dir=Path("/nonexistent")), reporter, None)
    state = TrainerState()
    state.max_steps = 10
    for step, loss in ((3, 1.5), (4, float("nan")), (5, float("nan")), (6, 1.25)):
        state.global_step = step
        callback.on_log(None, state, TrainerControl(), logs={"loss": loss})  # type: ignore[arg-type]
    reporter.close(timeout=5)
    merged: dict[str, Any] = {}
    for body in sent:
        assert json.dumps(body, allow_nan=False)
        merged.update(body)
    assert merged["step"] == 6 and merged["loss"] == 1.25
    assert events == [("Warning", "LossNotFinite", "loss is NaN at step 4")]  # once, at the first


def test_throughput_over_the_window_and_time_remaining() -> None:
    from finetune_trainer.reporting import ThroughputMeter, format_duration

    meter = ThroughputMeter(window_seconds=10.0)
    assert meter.status(0, 100) == {}  # no rate before two step ends
    meter.add(0.0, 0)
    meter.add(2.0, 1)
    assert meter.steps_per_second() == 0.5
    assert meter.tokens_per_second() is None  # tokens not counted
    for t in range(3, 21):  # then 1 step/s: the slow start leaves the 10 s window
        meter.add(float(t), t - 1)
    assert meter.steps_per_second() == 1.0
    assert meter.remaining_seconds(19, 100) == 81.0
    assert meter.status(19, 100) == {
        "stepsPerSecond": 1.0,
        "estimatedRemainingSeconds": 81,
        "remaining": "1m21s",
    }
    assert meter.remaining_seconds(19, -1) is None  # total unknown: no estimate
    counted = ThroughputMeter()
    counted.add(0.0, 0, 0)
    counted.add(4.0, 3, 2048)
    assert counted.status(3, 3) == {
        "stepsPerSecond": 0.75,
        "tokensPerSecond": 512.0,
        "estimatedRemainingSeconds": 0,
        "remaining": "0s",
    }
    assert [format_duration(s) for s in (44.6, 750, 11100, 190000)] == ["45s", "12m30s", "3h05m", "2d04h"]
