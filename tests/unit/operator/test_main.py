"""main.py: command line and structured logs."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

from finetune_operator.main import JsonFormatter, parse_args


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
    assert (parse_args([]).resync_seconds, parse_args([]).max_concurrent_reconciles) == (300, 16)
    scaled = parse_args(["--resync-seconds", "3600", "--max-concurrent-reconciles", "64"])
    assert (scaled.resync_seconds, scaled.max_concurrent_reconciles) == (3600, 64)
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
