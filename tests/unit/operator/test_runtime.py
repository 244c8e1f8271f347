"""runtime.py: the process's state reaches kopf's handlers through the memo, shared by every job's copy."""

from __future__ import annotations

import asyncio
import copy

import kopf
import pytest
from finetune_operator import handlers
from finetune_operator.runtime import Runtime, runtime_of


def test_every_jobs_memo_copy_shares_the_one_runtime() -> None:
    memo = kopf.Memo(runtime=Runtime())
    per_job = copy.copy(memo)  # what kopf hands a job's handlers (a shallow copy of the operator's memo)
    assert runtime_of(per_job) is runtime_of(memo)
    runtime_of(per_job).wakes[("ns", "job")] = asyncio.Event()
    assert handlers.probe_jobs(memo=memo) == 1


def test_a_memo_without_a_runtime_says_how_to_start() -> None:
    with pytest.raises(RuntimeError, match="finetune-operator"):
        runtime_of(kopf.Memo())
