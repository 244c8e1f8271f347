"""bench/scale's pure parts: reading the apiserver's request counters, rates, /proc, the jobs it applies."""

from __future__ import annotations

from finetune_api.trainer_config import parse_job

from bench.scale.bench import (
    CLOCK_TICKS,
    acknowledged,
    job_manifest,
    process_cpu_seconds,
    replacement_of,
    request_counts,
    request_rates,
    rss_megabytes,
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
        "",
    ]
)


def test_request_counters_per_resource_and_rates() -> None:
    counts = request_counts(METRICS)
    assert counts == {"pods": 15.0, "finetunejobs/status": 3.0, "/metrics": 2.0}
    later = {**counts, "pods": 45.0, "nodes": 6.0}
    rates = request_rates(counts, later, 60.0)
    assert rates == {"total": 0.6, "by_resource": {"nodes": 0.1, "pods": 0.5}}


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
