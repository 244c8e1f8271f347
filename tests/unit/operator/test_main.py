"""main.py: command line and structured logs."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

from finetune_operator.main import JsonFormatter, KueueAbsentIsNormal, parse_args


def test_args_defaults_and_scope(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("FTO_NAMESPACES", raising=False)
    args = parse_args([])
    assert args.namespace == [] and args.metrics_port == 8000 and args.health_port == 8080
    assert args.node_lost_seconds == 120 and args.unreachable_toleration_seconds == 30
    assert parse_args(["-n", "a", "--namespace", "b"]).namespace == ["a", "b"]
    monkeypatch.setenv("FTO_NAMESPACES", "x,y")
    assert parse_args([]).namespace == ["x", "y"]


def test_json_log_lines_carry_extras() -> None:
    record = logging.LogRecord("finetune_operator", logging.INFO, "f", 1, "decision: %s", ("NodeLost",), None)
    record.finetunejob = "ns/job"
    record.settings = object()  # kopf's extras are dropped
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "decision: NodeLost" and line["finetunejob"] == "ns/job"
    assert line["level"] == "info" and "settings" not in line


def test_kopf_warning_about_kueue_missing_is_info_and_others_stay_warnings() -> None:
    def warning(text: str) -> logging.LogRecord:
        return logging.LogRecord("kopf.test", logging.WARNING, "f", 1, text, (), None)

    kueue_missing = (
        "Unresolved resources cannot be served (try creating their CRDs): kueue.x-k8s.io/v1beta2/workloads"
    )
    kueue_only = warning(kueue_missing)
    logging.getLogger("kopf.test").setLevel(logging.INFO)
    assert KueueAbsentIsNormal().filter(kueue_only) and kueue_only.levelno == logging.INFO
    assert "Kueue is not installed" in kueue_only.getMessage()
    logging.getLogger("kopf.test").setLevel(logging.WARNING)  # the operator's default for kopf: dropped
    assert not KueueAbsentIsNormal().filter(warning(kueue_missing))
    typo = warning(
        "Unresolved resources cannot be served (try creating their CRDs): finetune.dev/v1alpha1/fnetunejobs, "
        "kueue.x-k8s.io/v1beta2/workloads"
    )
    assert KueueAbsentIsNormal().filter(typo) and typo.levelno == logging.WARNING


def test_leader_election_and_release_flags(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import pytest

    monkeypatch.setenv("POD_NAMESPACE", "fto-system")
    args = parse_args(["--leader-election", "--leader-election-id", "x-leader"])
    assert args.leader_election and args.leader_election_namespace == "fto-system"
    assert args.leader_election_id == "x-leader" and not args.release_finalizers
    assert (args.lease_duration_seconds, args.renew_deadline_seconds, args.retry_period_seconds) == (
        15,
        10,
        2,
    )
    assert parse_args([]).orphan_sweep_seconds == 60 and not parse_args([]).leader_election
    assert (parse_args([]).resync_seconds, parse_args([]).max_concurrent_reconciles) == (300, 64)
    scaled = parse_args(["--resync-seconds", "3600", "--max-concurrent-reconciles", "8"])
    assert (scaled.resync_seconds, scaled.max_concurrent_reconciles) == (3600, 8)
    with pytest.raises(SystemExit):
        parse_args(["--max-concurrent-reconciles", "0"])
    assert parse_args(["--release-finalizers", "-n", "a"]).release_finalizers
    # a leader must give up before anyone may take over
    with pytest.raises(SystemExit):
        parse_args(["--lease-duration-seconds", "5", "--renew-deadline-seconds", "5"])


def test_the_command_registers_the_kopf_handlers() -> None:
    """`finetune-operator` imports main only: the handlers must be registered from there (a lost import once
    left the operator running, logging "starting", with no handler at all)."""
    code = (
        "import sys, kopf, finetune_operator.main as m\n"
        "from kopf._core.intents.causes import Activity\n"
        "assert 'finetune_operator.handlers' in sys.modules\n"
        "r = m.handlers.REGISTRY\n"
        "assert r is kopf.get_default_registry()\n"
        "print(sorted(h.id for h in r._activities.get_handlers(activity=Activity.STARTUP)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.split() == ["['configure',", "'start_orphan_sweep']"]
