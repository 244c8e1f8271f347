"""bench/scale's pure parts: reading the apiserver's request counters, rates, /proc, the jobs it applies."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from finetune_api.trainer_config import parse_job

from bench.scale.bench import (
    CLOCK_TICKS,
    STANDIN_IMAGE,
    acknowledged,
    job_manifest,
    process_cpu_seconds,
    replacement_of,
    request_counts,
    request_rates,
    request_seconds,
    restart_summary,
    rss_megabytes,
    trace_breakdown,
    trainer_exit_breakdown,
    training_again,
)


def counter(value: int, resource: str, subresource: str = "", verb: str = "GET") -> str:
    labels = f'code="200",group="",resource="{resource}",subresource="{subresource}",verb="{verb}"'
    return f"apiserver_request_total{{{labels}}} {value}"


METRICS = "\n".join(
    [
        "# HELP apiserver_request_total [STABLE] Counter of apiserver requests",
        "# TYPE apiserver_request_total counter",
        counter(10, "pods", verb="LIST"),
        counter(5, "pods"),
        counter(3, "finetunejobs", "status", verb="PATCH"),
        counter(2, "", "/metrics"),
        "# HELP apiserver_request_duration_seconds x",
        "# TYPE apiserver_request_duration_seconds histogram",
        'apiserver_request_duration_seconds_bucket{verb="GET",le="0.1"} 99',
        'apiserver_request_duration_seconds_sum{verb="GET"} 1.5',
        'apiserver_request_duration_seconds_count{verb="GET"} 99',
        'apiserver_request_duration_seconds_sum{verb="WATCH"} 3600',
        'apiserver_request_duration_seconds_count{verb="WATCH"} 4',
        'apiserver_request_duration_seconds_sum{verb="PATCH"} 0.5',
        'apiserver_request_duration_seconds_count{verb="PATCH"} 1',
        "",
    ]
)


def test_request_counters_per_resource_and_rates() -> None:
    counts = request_counts(METRICS)
    assert counts == {"pods": 15.0, "finetunejobs/status": 3.0, "/metrics": 2.0}
    later = {**counts, "pods": 45.0, "nodes": 6.0}
    rates = request_rates(counts, later, 60.0)
    assert rates == {"total": 0.6, "by_resource": {"nodes": 0.1, "pods": 0.5}}


def test_the_apiservers_own_request_time_leaves_out_watches() -> None:
    assert request_seconds(METRICS) == (2.0, 100.0)


def test_process_figures_from_proc() -> None:
    stat = f"4242 (finetune-op (x)) S 1 2 3 4 5 6 7 8 9 10 {3 * CLOCK_TICKS} {CLOCK_TICKS} 0 0 20 0 1 0"
    assert process_cpu_seconds(stat) == 4.0
    assert rss_megabytes("Name:\tpython\nVmRSS:\t  112640 kB\n") == 110.0


def test_the_jobs_applied_are_valid_and_never_train() -> None:
    for kind in ("suspended", "pending"):
        manifest = job_manifest("job00001", kind, "localhost/finetune-trainer:tiny")
        job = parse_job(manifest, "bench")
        assert job.spec.restart_policy.pending_timeout_seconds == 0
        if kind == "suspended":
            assert job.spec.suspend
        else:
            assert job.spec.scheduling.node_selector == {"finetune.dev/bench-scale": "nowhere"}
    assert acknowledged("suspended", {"status": {"phase": "Suspended"}})
    assert not acknowledged("pending", {"status": {"phase": "Pending"}})
    assert acknowledged("pending", {"status": {"attempt": 1}})
    assert replacement_of("job00001-3") == "job00001-4"


def test_running_jobs_run_the_stand_in_until_deleted() -> None:
    job = parse_job(job_manifest("job00001", "running", STANDIN_IMAGE, step_seconds=2.0), "bench")
    assert job.spec.image == STANDIN_IMAGE and not job.spec.scheduling.node_selector
    assert job.spec.training.max_steps >= 100_000  # never finishes during a bench
    assert job.spec.resources.cpu is None  # no CFS limit on N python processes sharing 2 cores
    assert [(v.name, v.value) for v in job.spec.env] == [("FTO_STANDIN_STEP_SECONDS", "2.0")]
    assert not acknowledged("running", {"status": {"phase": "Running"}})  # no step reported yet
    assert acknowledged("running", {"status": {"phase": "Running", "step": 0}})
    assert not training_again({"status": {"phase": "Restarting", "attempt": 2}})
    assert training_again({"status": {"phase": "Running", "attempt": 2}})
    jobs = [
        {"status": {"restarts": {"preemption": 1, "error": 0}, "lostSteps": 2}},
        {"status": {"restarts": {"preemption": 1}, "lateEmergencySaves": 1}},
        {},
    ]
    summary = restart_summary(jobs)
    assert summary == {"restarts": {"preemption": 2}, "late_emergency_saves": 1, "lost_steps": 2}


def test_the_stand_ins_end_split_by_its_own_times() -> None:
    message = json.dumps({"reason": "Preempted", "standin_signal_at": 101.5, "standin_seconds": 0.25})
    breakdown = trainer_exit_breakdown(
        {"job00001-1": 100.0, "job00002-1": 100.0, "job00003-1": 100.0},
        {"job00001-1": 103.0, "job00002-1": 104.0},
        {"job00001-1": message, "job00002-1": '{"reason": "Preempted"}', "job00003-1": message},
    )
    assert {name: stats["p50"] for name, stats in breakdown.items()} == {
        "end->sigterm_taken": 1.5,
        "sigterm_taken->message": 0.25,
        "message->seen_exited": 1.25,
    }
    assert breakdown["end->sigterm_taken"]["n"] == 1  # no times in its message, or not seen exited: left out


def test_trace_breakdown_lines_up_the_log_with_the_bench_watch() -> None:
    def line(at: str, message: str, job: str = "job00001") -> str:
        return json.dumps(
            {"time": f"2026-11-30T10:00:{at}+00:00", "message": message, "finetunejob": f"ns/{job}"}
        )

    log = [
        "not json",
        line("00.500", "pod event MODIFIED job00001-1 deleting"),
        line("00.600", "look wants the API, 0.010 s after the wake-up"),
        line("01.600", "API pass starts"),
        line("02.000", "decision: DeletedWhilePending (Preempted) → restart"),
        line("02.300", "ReleasePod 0.100 s"),
        line("02.400", "pod event DELETED job00001-1 deleting"),
        line("03.000", "event AttemptCreated: created pod job00001-2 (attempt 2, run directory x)"),
        line("00.700", "pod event MODIFIED job00002-1 deleting", job="job00002"),  # not in the burst
    ]
    start = datetime(2026, 11, 30, 10, 0, 0, tzinfo=UTC).timestamp()
    breakdown = trace_breakdown(log, {"job00001-1": start + 0.2}, {"job00001-2": start + 3.25})
    assert {name: stats["p50"] for name, stats in breakdown.items()} == {
        "end->operator_saw_end": 0.3,
        "operator_saw_end->woken": 0.1,
        "woken->pass_started": 1.0,
        "pass_started->decided": 0.4,
        "decided->released": 0.3,
        "released->operator_saw_gone": 0.1,
        "operator_saw_gone->bench_saw_new": 0.85,
    }
    # a step the log does not show is skipped: the next one counts from the last one found
    without_release = [entry for entry in log if "ReleasePod" not in entry]
    breakdown = trace_breakdown(without_release, {"job00001-1": start + 0.2}, {})
    assert breakdown["decided->operator_saw_gone"]["p50"] == 0.4
    assert "operator_saw_gone->bench_saw_new" not in breakdown
