"""Fault injection for tests (ours and the operator's cluster tests). Off unless a variable is set.

FTO_TEST_CUDA_OOM_IF_BATCH_ABOVE=N
    raise torch.OutOfMemoryError at the first step of a run when per_device_train_batch_size > N (exit 76);
    a restart with a batch <= N runs normally.
FTO_TEST_FAIL_AT_STEP=N
    raise RuntimeError when optimizer step N begins (exit 1: an application error).
FTO_TEST_SAVE_SLEEP_SECONDS=S
    sleep S seconds in the middle of writing a checkpoint (adapter, optimizer and scheduler written;
    rng_state, trainer_state and the commit marker not yet), so a SIGKILL lands mid-save.
FTO_TEST_SAVE_SLEEP_AT_STEP=N
    only sleep in the save of step N (default: every save).
FTO_TEST_STEP_SLEEP_SECONDS=S
    sleep S seconds at the end of every optimizer step (slows training so a signal lands mid-run).
FTO_TEST_MICRO_BATCH_SLEEP_SECONDS=S
    sleep S seconds at the end of every micro-batch (gradient accumulation), so an optimizer step takes
    gradient_accumulation_steps x S and a signal lands in the middle of one.
FTO_TEST_FINAL_SLEEP_SECONDS=S
    sleep S seconds after training ended (the checkpoint of the last step committed) and before final/ is
    written, so a SIGKILL lands in that window.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from finetune_trainer.logs import log


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    return int(value) if value else None


def _env_float(name: str) -> float | None:
    value = os.environ.get(name, "").strip()
    return float(value) if value else None


@dataclass
class Faults:
    cuda_oom_if_batch_above: int | None = None
    fail_at_step: int | None = None
    save_sleep_seconds: float | None = None
    save_sleep_at_step: int | None = None
    step_sleep_seconds: float | None = None
    micro_batch_sleep_seconds: float | None = None
    final_sleep_seconds: float | None = None

    @classmethod
    def from_env(cls) -> Faults:
        faults = cls(
            cuda_oom_if_batch_above=_env_int("FTO_TEST_CUDA_OOM_IF_BATCH_ABOVE"),
            fail_at_step=_env_int("FTO_TEST_FAIL_AT_STEP"),
            save_sleep_seconds=_env_float("FTO_TEST_SAVE_SLEEP_SECONDS"),
            save_sleep_at_step=_env_int("FTO_TEST_SAVE_SLEEP_AT_STEP"),
            step_sleep_seconds=_env_float("FTO_TEST_STEP_SLEEP_SECONDS"),
            micro_batch_sleep_seconds=_env_float("FTO_TEST_MICRO_BATCH_SLEEP_SECONDS"),
            final_sleep_seconds=_env_float("FTO_TEST_FINAL_SLEEP_SECONDS"),
        )
        active = {k: v for k, v in faults.__dict__.items() if v is not None}
        if active:
            log("fault_injection_enabled", level="warning", **active)
        return faults

    def before_step(self, next_step: int, per_device_batch: int, first_step_of_run: bool) -> None:
        if (
            self.cuda_oom_if_batch_above is not None
            and first_step_of_run
            and per_device_batch > self.cuda_oom_if_batch_above
        ):
            import torch

            raise torch.OutOfMemoryError(
                f"CUDA out of memory (injected by FTO_TEST_CUDA_OOM_IF_BATCH_ABOVE="
                f"{self.cuda_oom_if_batch_above}: per_device_train_batch_size {per_device_batch})"
            )
        if self.fail_at_step is not None and next_step == self.fail_at_step:
            raise RuntimeError(f"injected failure at step {next_step} (FTO_TEST_FAIL_AT_STEP)")

    def after_step(self) -> None:
        if self.step_sleep_seconds:
            time.sleep(self.step_sleep_seconds)

    def after_micro_batch(self) -> None:
        if self.micro_batch_sleep_seconds:
            time.sleep(self.micro_batch_sleep_seconds)

    def in_save(self, step: int) -> None:
        if self.save_sleep_seconds and self.save_sleep_at_step in (None, step):
            log("fault_injection_save_sleep", level="warning", step=step, seconds=self.save_sleep_seconds)
            time.sleep(self.save_sleep_seconds)

    def before_final(self, step: int) -> None:
        if self.final_sleep_seconds:
            log("fault_injection_final_sleep", level="warning", step=step, seconds=self.final_sleep_seconds)
            time.sleep(self.final_sleep_seconds)
