"""What N FineTuneJobs cost the apiserver and the operator, at rest and in a burst (issue 17), on the local
real cluster.

    .venv/bin/python -m bench.scale.bench --jobs 100 --kind suspended --out bench/scale/suspended.json
    .venv/bin/python -m bench.scale.bench --jobs 100 --kind pending --burst --out bench/scale/burst.json
    hack/images/build.sh standin   # once: the stand-in trainer's image (bench/scale/standin)
    .venv/bin/python -m bench.scale.bench --jobs 20 --kind running --burst --out bench/scale/running.json

The operator measured is the one on PYTHONPATH (run it once with this worktree's `operator/`, once with
another checkout's, to compare). Steps, in a fresh namespace:

1. with no operator running, count the apiserver's requests over `--window` s: `apiserver_request_total`
   from the apiserver's own /metrics (`kubectl get --raw /metrics`), before and after, as requests/s in total
   and per resource. This is the cluster's own background (nothing else reads FineTuneJobs).
2. start `finetune-operator --namespace <ns>`, wait `--settle` s, apply N jobs (16 at a time) and time until
   every job is acknowledged (`--kind suspended`: phase Suspended; `--kind pending`: its first pod exists,
   unschedulable by a nodeSelector nothing matches; `--kind running`: phase Running and a step reported by
   its trainer, the stand-in of bench/scale/standin, which only sleeps `--step-seconds` a step and patches
   its job's status as the trainer does, with no CPU request so that N fit the node).
3. wait `--settle` s, then count again over `--window` s: the difference to 1. is what the operator costs at
   rest with N jobs (`--kind running`: with the trainers' own status patches, N / step-seconds a second);
   over the same window the operator's CPU (utime + stime from /proc) and its RSS.
4. `--burst` (`--kind pending` or `running`): delete every trainer pod at once (normal deletion, SIGTERM
   and the grace period, as a drain or preemption); one watch records when each pod is seen deleting (its
   end) and when its replacement (`<job>-<attempt + 1>`) appears: p50/p99/max. `--kind running` also:
   deletion → the trainer's container seen exited (its SIGTERM handling: a checkpoint, a status patch, exit
   75), the time until every job trains again (Running, a step reported), and the jobs' restart counters.
5. delete the namespace (the operator still running, so it releases its finalizers), stop the operator.

FTO_TRACE=1 in the environment (passed on to the operator): the burst also reports where the seconds go
(`trace_breakdown`, from the operator's time-stamped log lines). Results and their analysis: README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

from kubernetes import client, watch
from kubernetes.client.rest import ApiException
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench.recovery.bench import summarize  # noqa: E402
from tests.harness.cluster import Cluster  # noqa: E402
from tests.harness.kube import Kube, wait_for  # noqa: E402

GROUP, VERSION, PLURAL = "finetune.dev", "v1alpha1", "finetunejobs"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# ============================================================================================ pure parts


def request_counts(metrics_text: str) -> dict[str, float]:
    """apiserver_request_total summed per resource[/subresource] (a non-resource request: its path)."""
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        if family.name != "apiserver_request":  # the parser drops the counter's _total
            continue
        for sample in family.samples:
            if sample.name != "apiserver_request_total":
                continue
            resource, sub = sample.labels.get("resource"), sample.labels.get("subresource")
            key = f"{resource}/{sub}" if resource and sub else (resource or sub or "-")
            counts[key] = counts.get(key, 0.0) + sample.value
    return counts


def request_seconds(metrics_text: str) -> tuple[float, float]:
    """The apiserver's own time spent on requests, summed, and their number (apiserver_request_duration_
    seconds _sum and _count; watches and exec/port-forward left out: they last as long as they are open)."""
    total = count = 0.0
    for family in text_string_to_metric_families(metrics_text):
        if family.name != "apiserver_request_duration_seconds":
            continue
        for sample in family.samples:
            if sample.labels.get("verb") in ("WATCH", "WATCHLIST", "CONNECT"):
                continue
            if sample.name.endswith("_sum"):
                total += sample.value
            elif sample.name.endswith("_count"):
                count += sample.value
    return total, count


def request_rates(before: dict[str, float], after: dict[str, float], seconds: float) -> dict[str, Any]:
    """Requests/s over a window, in total and for each resource that saw any."""
    per = {
        key: round((after.get(key, 0.0) - before.get(key, 0.0)) / seconds, 3)
        for key in sorted(set(before) | set(after))
    }
    per = {key: value for key, value in per.items() if value > 0}
    return {"total": round(sum(per.values()), 3), "by_resource": per}


def process_cpu_seconds(stat: str) -> float:
    """utime + stime of /proc/<pid>/stat, in seconds (fields 14 and 15, after the command in parentheses)."""
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_megabytes(status: str) -> float:
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


#: --kind running: the stand-in trainer (bench/scale/standin; `hack/images/build.sh standin`).
STANDIN_IMAGE = "localhost/finetune-standin-trainer:dev"
#: --kind running never reaches its last step during a bench: it runs until its pod is deleted.
RUNNING_MAX_STEPS = 1_000_000


def job_manifest(name: str, kind: str, image: str, step_seconds: float = 5.0) -> dict[str, Any]:
    """A FineTuneJob that never trains: suspended, pending on a node that does not exist, or running the
    stand-in trainer (sleeps `step_seconds` a step and reports it; a "checkpoint" every 6 steps)."""
    spec: dict[str, Any] = {
        "model": {"name_or_path": "/models/none"},
        "dataset": {"path": "/data/none.jsonl"},
        "training": {"max_steps": 10, "save_steps": 5},
        "checkpoint": {"volumeSize": "64Mi", "deleteWithJob": True},
        "resources": {"gpus": 0, "cpu": "100m", "memory": "128Mi"},
        "restartPolicy": {"pendingTimeoutSeconds": 0, "maxPreemptions": 1000},
        "image": image,
        "imagePullPolicy": "Never",
    }
    if kind == "suspended":
        spec["suspend"] = True
    elif kind == "pending":
        spec["scheduling"] = {"nodeSelector": {"finetune.dev/bench-scale": "nowhere"}}
    else:
        spec["training"] = {"max_steps": RUNNING_MAX_STEPS, "save_steps": 6}
        # No CPU request or limit: N idle stand-ins fit the node's 2 cores, and a CFS limit would make the
        # burst measure throttled python start-ups. Memory: the stand-in's RSS is ~50 MB.
        spec["resources"] = {"gpus": 0, "memory": "128Mi"}
        spec["env"] = [{"name": "FTO_STANDIN_STEP_SECONDS", "value": str(step_seconds)}]
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": spec,
    }


def acknowledged(kind: str, job: dict[str, Any]) -> bool:
    status = job.get("status") or {}
    if kind == "suspended":
        return status.get("phase") == "Suspended"
    if kind == "running":
        return status.get("phase") == "Running" and status.get("step") is not None
    return int(status.get("attempt") or 0) >= 1


def training_again(job: dict[str, Any]) -> bool:
    """After the burst: the job's next attempt runs and its trainer reported a step (the operator's
    Restarting → Running 'Resumed')."""
    status = job.get("status") or {}
    return int(status.get("attempt") or 0) >= 2 and status.get("phase") == "Running"


def trainer_exit_breakdown(
    deleting: dict[str, float], exited: dict[str, float], messages: dict[str, str]
) -> dict[str, dict[str, float]]:
    """The stand-in's end, split by its termination message's own times (standin_signal_at, standin_seconds;
    one clock, one machine): deletion seen → the stand-in took SIGTERM (the kubelet's part), → its message
    written (checkpoint, status patch), → the bench saw the container terminated (exit, the kubelet's status
    update). Wall times; pods without those fields are left out."""
    parts: dict[str, list[float]] = {
        "end->sigterm_taken": [],
        "sigterm_taken->message": [],
        "message->seen_exited": [],
    }
    for pod, deleted_at in deleting.items():
        try:
            message = json.loads(messages.get(pod) or "{}")
            signal_at, handling = float(message["standin_signal_at"]), float(message["standin_seconds"])
        except (ValueError, KeyError, TypeError):
            continue
        if pod not in exited:
            continue
        parts["end->sigterm_taken"].append(signal_at - deleted_at)
        parts["sigterm_taken->message"].append(handling)
        parts["message->seen_exited"].append(exited[pod] - signal_at - handling)
    return {name: summarize(values) for name, values in parts.items() if values}


def restart_summary(jobs: list[dict[str, Any]]) -> dict[str, Any]:
    """The jobs' restart counters after a burst: by cause, emergency saves late, steps lost."""
    by_cause: dict[str, int] = {}
    late = lost = 0
    for job in jobs:
        status = job.get("status") or {}
        for cause, count in (status.get("restarts") or {}).items():
            if count:
                by_cause[cause] = by_cause.get(cause, 0) + int(count)
        late += int(status.get("lateEmergencySaves") or 0)
        lost += int(status.get("lostSteps") or 0)
    return {"restarts": by_cause, "late_emergency_saves": late, "lost_steps": lost}


def replacement_of(pod: str) -> str:
    job, attempt = pod.rsplit("-", 1)
    return f"{job}-{int(attempt) + 1}"


#: The operator's log lines (FTO_TRACE=1) that mark a step on the way from a pod's end to its replacement,
#: in order: (segment name, predicate on (message, old pod, new pod)).
TRACE_MARKS: list[tuple[str, Callable[[str, str, str], bool]]] = [
    ("operator_saw_end", lambda m, old, new: m.startswith("pod event") and f" {old} deleting" in m),
    ("woken", lambda m, old, new: m.startswith("look wants the API")),
    ("pass_started", lambda m, old, new: m == "API pass starts"),
    ("decided", lambda m, old, new: m.startswith("decision:")),
    ("released", lambda m, old, new: m.startswith("ReleasePod")),
    ("operator_saw_gone", lambda m, old, new: m == f"pod event DELETED {old} deleting"),
]


def trace_breakdown(
    log_lines: list[str], ends: dict[str, float], seen: dict[str, float]
) -> dict[str, dict[str, float]]:
    """Where the seconds go between a pod's end and its replacement, from the operator's log (JSON lines,
    FTO_TRACE=1) and the bench's own watch (`ends`: old pod → wall time it was seen deleting; `seen`: new
    pod → wall time it was seen created). For each old pod the first line of each mark after its end;
    returns, per step, the seconds since the step before (p50/p99/max over the pods)."""
    by_job: dict[str, list[tuple[float, str]]] = {}
    for line in log_lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        job = str(entry.get("finetunejob", "")).rsplit("/", 1)[-1]
        if job:
            when = datetime.fromisoformat(entry["time"]).timestamp()
            by_job.setdefault(job, []).append((when, str(entry.get("message", ""))))
    segments: dict[str, list[float]] = {}
    for old, ended in ends.items():
        new = replacement_of(old)
        job = old.rsplit("-", 1)[0]
        previous, name_before = ended, "end"
        lines = sorted(by_job.get(job, []))
        for mark, matches in TRACE_MARKS:
            at = next((t for t, m in lines if t >= previous - 0.05 and matches(m, old, new)), None)
            if at is None:
                continue
            segments.setdefault(f"{name_before}->{mark}", []).append(max(0.0, at - previous))
            previous, name_before = at, mark
        if new in seen:
            segments.setdefault(f"{name_before}->bench_saw_new", []).append(max(0.0, seen[new] - previous))
    return {name: summarize(values) for name, values in segments.items()}


# ============================================================================================ the cluster


def apiserver_counts(kube: Kube) -> dict[str, float]:
    return request_counts(kube.kubectl("get", "--raw", "/metrics", timeout=60).stdout)


def count_window(kube: Kube, seconds: float, during: Callable[[], None] | None = None) -> dict[str, Any]:
    before, started = apiserver_counts(kube), time.monotonic()
    if during is not None:
        during()
    time.sleep(max(0.0, seconds - (time.monotonic() - started)))
    after = apiserver_counts(kube)
    return request_rates(before, after, time.monotonic() - started)


class PodRecorder:
    """One watch on the namespace's pods: when each is first seen deleting, when each appears, and when its
    container is first seen terminated (a running trainer's exit)."""

    def __init__(self, kube: Kube, namespace: str):
        self.kube, self.namespace = kube, namespace
        self.lock = threading.Lock()
        self.added: dict[str, float] = {}
        self.deleting: dict[str, float] = {}
        self.exited: dict[str, float] = {}
        self.exited_wall: dict[str, float] = {}
        self.termination: dict[str, str] = {}  # the trainer's termination message
        self.added_wall: dict[str, float] = {}  # the same, as wall-clock time (to line up with the log)
        self.deleting_wall: dict[str, float] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                for event in watch.Watch().stream(
                    self.kube.core.list_namespaced_pod, self.namespace, timeout_seconds=30
                ):
                    now, wall = time.monotonic(), time.time()
                    pod = event["object"]
                    with self.lock:
                        self.added.setdefault(pod.metadata.name, now)
                        self.added_wall.setdefault(pod.metadata.name, wall)
                        if pod.metadata.deletion_timestamp is not None:
                            self.deleting.setdefault(pod.metadata.name, now)
                            self.deleting_wall.setdefault(pod.metadata.name, wall)
                        for c in pod.status.container_statuses or []:
                            if c.state and c.state.terminated and pod.metadata.name not in self.exited:
                                self.exited[pod.metadata.name], self.exited_wall[pod.metadata.name] = (
                                    now,
                                    wall,
                                )
                                self.termination[pod.metadata.name] = c.state.terminated.message or ""
                    if self.stop.is_set():
                        return
            except ApiException:
                time.sleep(0.2)


def make_namespace(kube: Kube) -> str:
    name = f"bench-scale-{uuid.uuid4().hex[:5]}"
    kube.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    return name


def list_jobs(kube: Kube, namespace: str) -> list[dict[str, Any]]:
    found: Any = kube.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
    return list(found["items"])


def start_operator(cluster: Cluster, namespace: str, extra: list[str]) -> subprocess.Popen[bytes]:
    log = open(f"/tmp/{namespace}-operator.log", "wb")  # noqa: SIM115  (owned by the child)
    return subprocess.Popen(
        [
            str(Path(sys.executable).parent / "finetune-operator"),
            "--namespace",
            namespace,
            "--metrics-port",
            "0",
            "--health-port",
            "0",
            *extra,
        ],
        env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def burst(
    kube: Kube, namespace: str, recorder: PodRecorder, operator_pid: int, kind: str, timeout: float
) -> dict[str, Any]:
    """Delete every trainer pod at once (normal deletion: the pod's grace period, SIGTERM first, as a drain
    or a preemption does) and time each pod's end → its replacement created."""
    pods = [str(p.metadata.name) for p in kube.core.list_namespaced_pod(namespace).items]
    load_before = os.getloadavg()[0]
    stat = Path(f"/proc/{operator_pid}/stat")
    metrics_before = kube.kubectl("get", "--raw", "/metrics", timeout=60).stdout
    cpu_before, started = process_cpu_seconds(stat.read_text()), time.monotonic()
    with ThreadPoolExecutor(max_workers=32) as pool:
        list(pool.map(lambda name: kube.core.delete_namespaced_pod(name, namespace), pods))

    def all_replaced() -> bool:
        with recorder.lock:
            return all(replacement_of(p) in recorder.added for p in pods)

    wait_for(all_replaced, timeout, interval=0.5, what=f"replacements of {len(pods)} pods")
    seconds = time.monotonic() - started
    replaced_at = time.monotonic()
    cpu = process_cpu_seconds(stat.read_text()) - cpu_before
    metrics_after = kube.kubectl("get", "--raw", "/metrics", timeout=60).stdout
    sum_before, n_before = request_seconds(metrics_before)
    sum_after, n_after = request_seconds(metrics_after)
    with recorder.lock:
        seen = [p for p in pods if p in recorder.deleting]  # the watch saw it deleting (not only gone)
        delays = [recorder.added[replacement_of(p)] - recorder.deleting[p] for p in seen]
        ends = {p: recorder.deleting_wall[p] for p in seen}
        created = dict(recorder.added_wall)
        exits = [recorder.exited[p] - recorder.deleting[p] for p in seen if p in recorder.exited]
        trainer_side = trainer_exit_breakdown(
            {p: recorder.deleting_wall[p] for p in seen},
            dict(recorder.exited_wall),
            dict(recorder.termination),
        )
    log = Path(f"/tmp/{namespace}-operator.log")
    running: dict[str, Any] = {}
    if kind == "running":
        # the trainers' side: deletion → container seen exited (SIGTERM, the stand-in's checkpoint, its
        # status patch and termination message), and the time until every job trains again
        wait_for(
            lambda: all(training_again(j) for j in list_jobs(kube, namespace)),
            timeout,
            interval=1.0,
            what=f"{len(pods)} jobs training again",
        )
        running = {
            "end_to_trainer_exited": summarize(exits),
            "trainer_exit_breakdown": trainer_side,
            "all_training_again_seconds": round(time.monotonic() - started, 2),
            "replaced_to_all_training_again_seconds": round(time.monotonic() - replaced_at, 2),
            **restart_summary(list_jobs(kube, namespace)),
        }
    return {
        "pods": len(pods),
        "unseen_deletions": len(pods) - len(seen),
        "end_to_created": summarize(delays),
        # the machine's 1-minute load average before the deletions and after the last replacement (2 cores,
        # shared): the apiserver's latency follows it
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        # from the deletions to the last replacement: the operator's CPU (of one core), and every request
        # the apiserver served meanwhile (all clients) with its own mean time per request
        "seconds": round(seconds, 2),
        "operator_cpu_percent": round(100 * cpu / seconds, 1),
        "apiserver_requests": int(n_after - n_before),
        "apiserver_mean_request_ms": round(1000 * (sum_after - sum_before) / max(1.0, n_after - n_before), 1),
        "breakdown": trace_breakdown(log.read_text().splitlines(), ends, created) if log.exists() else {},
        **running,
        "samples": [round(d, 3) for d in delays],
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    cluster = Cluster()
    kube = Kube(cluster.kubeconfig)
    kube.kubectl("apply", "-f", str(REPO / "crds"))
    namespace = make_namespace(kube)
    result: dict[str, Any] = {"jobs": args.jobs, "kind": args.kind, "namespace": namespace}
    image = args.image or (STANDIN_IMAGE if args.kind == "running" else "localhost/finetune-trainer:tiny")
    if args.kind == "running":
        result["step_seconds"] = args.step_seconds
    operator: subprocess.Popen[bytes] | None = None
    try:
        result["without_operator"] = count_window(kube, args.window)
        print("without operator:", json.dumps(result["without_operator"]), flush=True)
        operator = start_operator(cluster, namespace, args.operator_arg)
        time.sleep(args.settle)  # started, watching
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=16) as pool:
            list(
                pool.map(
                    lambda i: kube.custom.create_namespaced_custom_object(
                        GROUP,
                        VERSION,
                        namespace,
                        PLURAL,
                        job_manifest(f"job{i:05d}", args.kind, image, args.step_seconds),
                    ),
                    range(args.jobs),
                )
            )
        result["apply_seconds"] = round(time.monotonic() - started, 2)
        wait_for(
            lambda: all(acknowledged(args.kind, j) for j in list_jobs(kube, namespace)),
            args.ack_timeout,
            interval=1.0,
            what=f"{args.jobs} jobs acknowledged",
        )
        result["all_acknowledged_seconds"] = round(time.monotonic() - started, 2)
        print("applied → all acknowledged:", result["all_acknowledged_seconds"], "s", flush=True)
        time.sleep(args.settle)
        stat = Path(f"/proc/{operator.pid}/stat")
        cpu_before, cpu_started = process_cpu_seconds(stat.read_text()), time.monotonic()
        result["with_operator"] = count_window(kube, args.window)
        cpu = process_cpu_seconds(stat.read_text()) - cpu_before
        result["operator_cpu_percent"] = round(100 * cpu / (time.monotonic() - cpu_started), 2)
        result["operator_rss_mb"] = round(rss_megabytes(Path(f"/proc/{operator.pid}/status").read_text()), 1)
        result["operator_requests_per_second"] = round(
            result["with_operator"]["total"] - result["without_operator"]["total"], 3
        )
        print("with operator:", json.dumps({k: result[k] for k in result if k != "without_operator"}))
        if args.burst and args.kind != "suspended":  # suspended jobs have no pods
            recorder = PodRecorder(kube, namespace)
            time.sleep(1.0)  # the watch has listed
            try:
                result["burst"] = burst(kube, namespace, recorder, operator.pid, args.kind, args.ack_timeout)
            finally:
                recorder.stop.set()
            print("burst:", json.dumps({k: v for k, v in result["burst"].items() if k != "samples"}))
    finally:
        try:
            kube.core.delete_namespace(namespace)
            wait_for(
                lambda: namespace not in {n.metadata.name for n in kube.core.list_namespace().items},
                args.cleanup_timeout,
                interval=2.0,
                what=f"namespace {namespace} deleted",
            )
        except (ApiException, TimeoutError) as error:
            print(f"cleanup: {error}", file=sys.stderr)
        if operator is not None:
            operator.terminate()
            operator.wait(timeout=30)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--kind", choices=("suspended", "pending", "running"), default="suspended")
    parser.add_argument(
        "--burst", action="store_true", help="--kind pending/running: delete all trainer pods at once"
    )
    parser.add_argument(
        "--step-seconds", type=float, default=5.0, help="--kind running: the stand-in's seconds per step"
    )
    parser.add_argument("--window", type=float, default=60.0, help="seconds each request count spans")
    parser.add_argument("--settle", type=float, default=20.0, help="seconds to wait before each count")
    parser.add_argument("--ack-timeout", type=float, default=600.0)
    parser.add_argument("--cleanup-timeout", type=float, default=300.0)
    parser.add_argument(
        "--image",
        default=None,
        help=f"default: {STANDIN_IMAGE} (running), else localhost/finetune-trainer:tiny",
    )
    parser.add_argument(
        "--operator-arg", action="append", default=[], help="passed to finetune-operator (repeatable)"
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    result = run(args)
    print(json.dumps({k: v for k, v in result.items() if k != "burst"}, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
