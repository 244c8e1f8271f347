"""Recovery latency after preemption: finetune-operator vs a plain Kubernetes Job, on the local real cluster.

    .venv/bin/python -m bench.recovery.bench --disruptions 20 --job-disruptions 5 \
        --out bench/recovery/results.json

For each disruption the pod is evicted through the Eviction API (what `kubectl drain`, node upgrades and spot
rebalance handlers do; the pod gets condition DisruptionTarget). One watch on pods and one on the job record,
with this process's monotonic clock:

- end      the evicted pod's container is reported terminated (the kubelet's status update),
- created  the replacement pod appears (ADDED),
- running  the replacement's container is running,
- training the trainer patches a *new* step into the job's status (operator only: a plain Job has no status).

and reports end→created, end→running, end→training as p50/p99/max. The Job baseline uses the same watch on a
`sleep` pod with `backoffLimit: 1000` and a podFailurePolicy that ignores DisruptionTarget (the most a Job can
do for preemptions).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from kubernetes import client, watch
from kubernetes.client.rest import ApiException

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.harness import disruptions  # noqa: E402
from tests.harness.cluster import Cluster  # noqa: E402
from tests.harness.kube import Kube, wait_for  # noqa: E402
from tests.scenarios import operator_scenarios as sc  # noqa: E402

GROUP, VERSION, PLURAL = "finetune.dev", "v1alpha1", "finetunejobs"


class Recorder:
    """Watches pods (and the job's status) in a namespace; stores first-seen times per pod and step."""

    def __init__(self, kube: Kube, namespace: str, job: str | None):
        self.kube, self.namespace, self.job = kube, namespace, job
        self.lock = threading.Lock()
        self.created: dict[str, float] = {}
        self.running: dict[str, float] = {}
        self.ended: dict[str, float] = {}
        self.steps: list[tuple[float, int, str | None]] = []  # (time, step, podName)
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._pods, daemon=True)]
        if job:
            self.threads.append(threading.Thread(target=self._job, daemon=True))
        for t in self.threads:
            t.start()

    def _pods(self) -> None:
        while not self.stop.is_set():
            try:
                self._watch_pods()
            except ApiException:  # e.g. 504 "too large resource version": start a fresh watch
                time.sleep(0.2)

    def _watch_pods(self) -> None:
        w = watch.Watch()
        while not self.stop.is_set():
            for event in w.stream(self.kube.core.list_namespaced_pod, self.namespace, timeout_seconds=30):
                now = time.monotonic()
                pod = event["object"]
                name = pod.metadata.name
                with self.lock:
                    if event["type"] == "ADDED":
                        self.created.setdefault(name, now)
                    for s in pod.status.container_statuses or []:
                        if s.state and s.state.running:
                            self.running.setdefault(name, now)
                        if s.state and s.state.terminated:
                            self.ended.setdefault(name, now)
                if self.stop.is_set():
                    break

    def _job(self) -> None:
        while not self.stop.is_set():
            try:
                self._watch_job()
            except ApiException:
                time.sleep(0.2)

    def _watch_job(self) -> None:
        w = watch.Watch()
        while not self.stop.is_set():
            for event in w.stream(
                self.kube.custom.list_namespaced_custom_object,
                GROUP,
                VERSION,
                self.namespace,
                PLURAL,
                timeout_seconds=30,
            ):
                status = event["object"].get("status") or {}
                if status.get("step") is not None:
                    with self.lock:
                        if not self.steps or self.steps[-1][1] != status["step"]:
                            self.steps.append((time.monotonic(), int(status["step"]), status.get("podName")))
                if self.stop.is_set():
                    break

    def first_step_after(self, t: float, pod: str) -> float | None:
        with self.lock:
            for when, _step, pod_name in self.steps:
                if when > t and pod_name == pod:
                    return when
        return None


def _after(rec: Recorder, t: float, pod: str) -> Callable[[], float | None]:
    return lambda: rec.first_step_after(t, pod)


def _training_pod(kube: Kube, namespace: str, rec: Recorder) -> str | None:
    pod = (_job_status(kube, namespace).get("podName")) or None
    return pod if pod and rec.first_step_after(0.0, pod) else None


def _next_pod(kube: Kube, namespace: str, old: str) -> str | None:
    pod = _job_status(kube, namespace).get("podName")
    return str(pod) if pod and pod != old else None


def _trained_or_ended(rec: Recorder, pod: str, since: float) -> str | None:
    if rec.first_step_after(since, pod) and pod in rec.running:
        return "trained"
    return "ended" if pod in rec.ended else None


def _job_status(kube: Kube, namespace: str) -> dict[str, Any]:
    job: Any = kube.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "bench")
    return dict(job.get("status") or {})


def _member(seen: dict[str, float], pod: str) -> Callable[[], bool]:
    return lambda: pod in seen


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summarize(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": round(percentile(values, 0.5), 3),
        "p99": round(percentile(values, 0.99), 3),
        "max": round(max(values), 3) if values else float("nan"),
        "mean": round(statistics.fmean(values), 3) if values else float("nan"),
    }


def _jobs(kube: Kube, namespace: str) -> list[Any]:
    found: Any = kube.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
    return list(found["items"])


def make_namespace(kube: Kube, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:5]}"
    kube.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    wait_for(lambda: kube.core.read_namespaced_service_account("default", name), 30, what="default SA")
    return name


def bench_operator(kube: Kube, cluster: Cluster, n: int, image: str) -> dict[str, Any]:
    namespace = make_namespace(kube, "bench-op")
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
    log = open(f"/tmp/{namespace}-operator.log", "wb")  # noqa: SIM115
    operator = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "finetune-operator"),
            "--namespace",
            namespace,
            "--metrics-port",
            "0",
            "--health-port",
            "0",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    rec = Recorder(kube, namespace, "bench")
    samples: list[dict[str, float]] = []
    try:
        kube.kubectl("apply", "-f", str(REPO / "crds"))
        manifest = sc.tiny_job(
            "bench",
            image,
            steps=100000,
            save_steps=10,
            step_sleep=0.2,
            restartPolicy={"maxPreemptions": 1000},
        )
        kube.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, manifest)
        interfered = 0
        while len(samples) < n and interfered <= n:
            i = len(samples) + 1
            # the current attempt's trainer is training (it reported a step)
            pod: str = (
                wait_for(partial(_training_pod, kube, namespace, rec), 300, what="a trainer training") or ""
            )
            time.sleep(1.0)
            try:
                disruptions.evict(kube, namespace, pod)
            except ApiException as error:  # it ended on its own meanwhile
                if error.status != 404:
                    raise
                interfered += 1
                continue
            wait_for(_member(rec.ended, pod), 120, what=f"{pod} ended")
            end = rec.ended[pod]
            nxt: str = (
                wait_for(partial(_next_pod, kube, namespace, pod), 60, what=f"replacement of {pod}") or ""
            )
            outcome = wait_for(partial(_trained_or_ended, rec, nxt, end), 300, what=nxt)
            if outcome == "ended":  # something else (another test on the shared node) killed it: not a sample
                interfered += 1
                print(f"operator disruption {i}/{n}: {nxt} ended before training (interference), skipped")
                continue
            training = rec.first_step_after(end, nxt) or end
            sample = {
                "end_to_created": rec.created[nxt] - end,
                "end_to_running": rec.running[nxt] - end,
                "end_to_training": training - end,
            }
            samples.append(sample)
            print(
                f"operator disruption {i}/{n}: " + ", ".join(f"{k} {v:.3f}s" for k, v in sample.items()),
                flush=True,
            )
    finally:
        rec.stop.set()
        try:
            kube.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "bench")
            wait_for(
                lambda: not _jobs(kube, namespace),
                60,
                what="job deleted",
            )
        except (ApiException, TimeoutError) as error:
            print(f"cleanup: {error}", file=sys.stderr)
        operator.terminate()
        operator.wait(timeout=30)
        kube.core.delete_namespace(namespace)
    result = {key: summarize([s[key] for s in samples]) for key in samples[0]}
    return result | {"interfered": interfered, "samples": samples}


STOP_75 = "import signal, time; signal.signal(signal.SIGTERM, lambda *_: exit(75)); time.sleep(1e9)"


def bench_job(kube: Kube, n: int, image: str) -> dict[str, Any]:
    namespace = make_namespace(kube, "bench-job")
    rec = Recorder(kube, namespace, None)
    samples: list[dict[str, float]] = []
    manifest: dict[str, Any] = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "plain"},
        "spec": {
            "backoffLimit": 1000,
            "podFailurePolicy": {
                "rules": [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}]
            },
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "terminationGracePeriodSeconds": 5,
                    "containers": [
                        {
                            "name": "main",
                            "image": image,
                            "imagePullPolicy": "Never",
                            # like a trainer: exits 75 on SIGTERM (a Job counts 0 as success and stops)
                            "command": ["python3", "-c", STOP_75],
                            "resources": {"requests": {"cpu": "50m"}},
                        }
                    ],
                }
            },
        },
    }
    try:
        kube.batch.create_namespaced_job(namespace, manifest)  # type: ignore[arg-type]
        seen: set[str] = set()
        for i in range(1, n + 1):

            def current() -> str | None:
                with rec.lock:
                    fresh = [p for p in rec.running if p not in seen]
                return fresh[0] if fresh else None

            pod: str = wait_for(current, 900, what=f"job pod {i} running") or ""
            seen.add(pod)
            time.sleep(1.0)
            disruptions.evict(kube, namespace, pod)
            wait_for(_member(rec.ended, pod), 120, what=f"{pod} ended")
            nxt = wait_for(current, 900, what=f"replacement {i} running")
            assert nxt is not None
            end = rec.ended[pod]
            sample = {"end_to_created": rec.created[nxt] - end, "end_to_running": rec.running[nxt] - end}
            samples.append(sample)
            print(
                f"job disruption {i}/{n}: " + ", ".join(f"{k} {v:.3f}s" for k, v in sample.items()),
                flush=True,
            )
    finally:
        rec.stop.set()
        kube.core.delete_namespace(namespace)
    return {key: summarize([s[key] for s in samples]) for key in samples[0]} | {"samples": samples}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--disruptions", type=int, default=20)
    parser.add_argument(
        "--job-disruptions", type=int, default=5, help="the Job's delay doubles: keep it small"
    )
    parser.add_argument("--image", default="localhost/finetune-trainer:tiny")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--skip-job", action="store_true")
    args = parser.parse_args(argv)
    cluster = Cluster()
    kube = Kube(cluster.kubeconfig)
    result: dict[str, Any] = {}
    if args.disruptions:
        result["operator"] = bench_operator(kube, cluster, args.disruptions, args.image)
    if not args.skip_job and args.job_disruptions:
        result["job"] = bench_job(kube, args.job_disruptions, args.image)
    summary = {k: {m: v for m, v in r.items() if m != "samples"} for k, r in result.items()}
    print(json.dumps(summary, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
