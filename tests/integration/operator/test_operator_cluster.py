"""The operator end to end on the local real cluster: real trainer pods on the tiny model, real disruptions.

    FTO_CLUSTER=existing .venv/bin/python -m pytest tests/integration/operator -m cluster

Each test gets its own namespace and its own operator process (`finetune-operator --namespace NS`).
The undisturbed run's final adapter (test_happy_path) is the reference every disruption test must reproduce
bit for bit; run the file in order (the default) to get that comparison.
"""

from __future__ import annotations

import re

import pytest

from tests.integration.operator.conftest import LocalProvider, OperatorProcess
from tests.scenarios import operator_scenarios as sc

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(420)]
REFERENCE: dict[str, str] = {}


def _reference(request: pytest.FixtureRequest) -> str | None:
    """The undisturbed run's adapter digest: from this session, else from pytest's cache (when enabled)."""
    cache = getattr(request.config, "cache", None)  # absent under `-p no:cacheprovider`
    return REFERENCE.get("adapter") or (cache.get("fto/operator/reference_adapter", None) if cache else None)


def test_invalid_spec_is_rejected(provider: LocalProvider) -> None:
    sc.invalid_spec(provider)


def test_happy_path(
    provider: LocalProvider, operator: OperatorProcess, request: pytest.FixtureRequest
) -> None:
    digest = sc.happy_path(provider)
    REFERENCE["adapter"] = digest
    if getattr(request.config, "cache", None) is not None:
        request.config.cache.set("fto/operator/reference_adapter", digest)
    metrics = operator.metrics()
    assert re.search(r'finetune_training_step\{finetunejob="happy",namespace="[^"]+"\} 24\.0', metrics), (
        metrics
    )
    assert 'finetune_jobs{namespace="' in metrics and 'phase="Succeeded"} 1.0' in metrics
    sc.delete_job_cleans_up(provider, "happy")
    assert 'finetunejob="happy"' not in operator.metrics()


def test_drain(provider: LocalProvider, operator: OperatorProcess, request: pytest.FixtureRequest) -> None:
    sc.preempt_by_drain(provider, _reference(request))
    metrics = operator.metrics()
    assert re.search(r'finetune_restarts_total\{cause="preemption",finetunejob="drain",[^}]*\} 1\.0', metrics)
    assert re.search(
        r'finetune_recovery_duration_seconds_count\{finetunejob="drain",[^}]*\} 1\.0', metrics
    ), metrics
    assert re.search(
        r'finetune_checkpoint_save_duration_seconds_count\{finetunejob="drain",[^}]*\} [1-9]', metrics
    )


def test_noexecute_taint(provider: LocalProvider, request: pytest.FixtureRequest) -> None:
    sc.preempt_by_taint(provider, _reference(request))


def test_priority_preemption(provider: LocalProvider, request: pytest.FixtureRequest) -> None:
    sc.preempt_by_priority(provider, _reference(request))


def test_pod_deleted_by_user(provider: LocalProvider, request: pytest.FixtureRequest) -> None:
    sc.preempt_by_user_delete(provider, _reference(request))


def test_node_gone(provider: LocalProvider, request: pytest.FixtureRequest) -> None:
    sc.node_gone(provider, _reference(request))


def test_node_gone_with_a_shared_volume_waits_for_confirmation(
    provider: LocalProvider, request: pytest.FixtureRequest
) -> None:
    sc.node_gone_shared_volume(provider, _reference(request))


def test_host_oom_raises_memory(provider: LocalProvider) -> None:
    sc.host_oom(provider)


def test_cuda_oom_halves_batch(provider: LocalProvider) -> None:
    sc.cuda_oom(provider)


def test_application_error_exhausts_budget(provider: LocalProvider) -> None:
    sc.app_error_budget(provider)


def test_operator_restarts(provider: LocalProvider) -> None:
    sc.operator_restarts(provider)


def test_suspend_resume(provider: LocalProvider) -> None:
    sc.suspend_resume(provider)


# --- issue 12: what the apiserver refuses at create time is on the job within 10 s; data from a volume ---


def test_missing_priority_class_shows_pending_then_starts(provider: LocalProvider) -> None:
    sc.refused_missing_priority_class(provider)


def test_quota_refusal_shows_pending_then_starts(provider: LocalProvider) -> None:
    sc.refused_by_quota(provider)


def test_config_map_over_1mib_fails_the_job(provider: LocalProvider) -> None:
    sc.refused_config_map_too_big(provider)


def test_dataset_from_a_read_only_volume(provider: LocalProvider, request: pytest.FixtureRequest) -> None:
    sc.dataset_from_volume(provider, _reference(request))


def test_recreated_job_trains_anew_in_its_own_run_directory(provider: LocalProvider) -> None:
    sc.recreated_job_trains_anew(provider)


def test_quick_recreate_with_delete_with_job_waits_for_the_old_claim(provider: LocalProvider) -> None:
    sc.quick_recreate_with_delete_with_job(provider)
