"""Exit paths other than success: CUDA OOM (injected), app errors, bad configs, SIGTERM at start-up."""

from __future__ import annotations

import json
import shutil
import signal
import time
from pathlib import Path

import pytest
import yaml
from trainer_harness import Reference, base_env, run, start, write_config

SHORT = {"max_steps": 6, "save_steps": 3}


def snapshot(path: Path) -> dict[str, tuple[int, float]]:
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime) for p in path.rglob("*")}


@pytest.mark.slow
def test_cuda_oom_exits_76_with_batch_then_half_batch_completes(tiny: Path, work: Path) -> None:
    config = write_config(work / "config.yaml", tiny, **SHORT)
    env = base_env(FTO_TEST_CUDA_OOM_IF_BATCH_ABOVE="2")
    out = work / "out"
    proc = run(config, out, env=env, tag="oom")
    assert proc.popen.returncode == 76, proc.tail()
    term = proc.termination()
    assert term["reason"] == "CudaOOM"
    assert term["per_device_train_batch_size"] == 4 and term["gradient_accumulation_steps"] == 1
    assert "out of memory" in term["message"]
    assert not list(out.glob("checkpoint-*"))

    # What the operator does next: half the micro-batch, double the accumulation (same effective batch),
    # in the next attempt's config (the only route for the adaptations).
    adapted = write_config(
        work / "adapted.yaml", tiny, **SHORT, per_device_train_batch_size=2, gradient_accumulation_steps=2
    )
    retry = run(adapted, out, env=env, tag="retry")
    assert retry.popen.returncode == 0, retry.tail()
    assert retry.termination()["reason"] == "Completed"
    assert (out / "final" / "adapter_model.safetensors").is_file()


@pytest.mark.slow
def test_application_error_exits_1_with_message(tiny: Path, work: Path) -> None:
    config = write_config(work / "config.yaml", tiny, **SHORT)
    proc = run(config, work / "out", env=base_env(FTO_TEST_FAIL_AT_STEP="5"), tag="fail")
    assert proc.popen.returncode == 1, proc.tail()
    term = proc.termination()
    assert term["reason"] == "Error" and "injected failure at step 5" in term["message"]
    assert term["checkpoint"] == "checkpoint-3" and term["step"] == 4


@pytest.mark.slow
def test_sigterm_during_startup_exits_75_without_checkpoint(reference: Reference, work: Path) -> None:
    out = work / "out"
    shutil.copytree(reference.output_dir, out)
    shutil.rmtree(out / "final")
    before = snapshot(out)
    proc = start(reference.config, out, tag="early")
    proc.wait_event(lambda e: e.get("event") == "config_loaded")  # now importing torch / loading the model
    time.sleep(0.3)
    proc.signal(signal.SIGTERM)
    assert proc.wait(30) == 75, proc.tail()
    term = proc.termination()
    assert term["reason"] == "Preempted" and term["checkpoint"] == "checkpoint-40"
    assert snapshot(out) == before, "nothing in the output dir may change"


def _bad(tiny: Path, work: Path, case: str) -> tuple[Path, str]:
    """A config that cannot work, and the field its error line must name."""
    config = yaml.safe_load((tiny / "trainer-config.yaml").read_text())
    if case == "unknown_model_path":
        config["model"]["name_or_path"] = str(work / "no-such-model")
        field = "model.name_or_path"
    elif case == "save_steps_0":
        config["training"]["save_steps"] = 0
        field = "training.save_steps"
    elif case == "missing_dataset_file":
        config["dataset"]["path"] = str(work / "nope.jsonl")
        field = "dataset.path"
    elif case == "missing_dataset_field":
        config["dataset"]["text_field"] = "quote"
        field = "dataset.text_field"
    elif case == "unknown_key":
        config["training"]["learning_rat"] = 0.1
        field = "training.learning_rat"
    elif case == "inline_example_without_field":
        del config["dataset"]["path"]
        config["dataset"]["examples"] = [{"text": "hello"}, {"prompt": "no text here"}]
        field = "dataset.examples[1]"
    elif case == "empty_dataset_file":
        (work / "empty.jsonl").write_text("\n")
        config["dataset"]["path"] = str(work / "empty.jsonl")
        field = "dataset.path"
    elif case == "malformed_jsonl":
        (work / "bad.jsonl").write_text('{"text": "fine"}\n{"text": "cut off\n{"text": "x"}\n')
        config["dataset"]["path"] = str(work / "bad.jsonl")
        field = "dataset.path"
    elif case == "text_not_a_string":
        (work / "numbers.jsonl").write_text("".join(f'{{"text": {i}}}\n' for i in range(8)))
        config["dataset"]["path"] = str(work / "numbers.jsonl")
        field = "dataset.text_field"
    elif case == "eval_fraction_leaves_no_training_rows":
        (work / "two.jsonl").write_text('{"text": "one row"}\n{"text": "another row"}\n')
        config["dataset"]["path"] = str(work / "two.jsonl")
        config["dataset"]["eval_fraction"] = 0.6
        field = "dataset.eval_fraction"
    elif case == "lora_target_module_missing":
        config["lora"]["target_modules"] = ["c_attn", "q_proj"]  # GPT-2 has c_attn; peft alone ignores q_proj
        field = "lora.target_modules"
    else:  # pragma: no cover
        raise AssertionError(case)
    path = work / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, field


@pytest.mark.parametrize(
    "case",
    [
        "unknown_model_path",
        "save_steps_0",
        "missing_dataset_file",
        "unknown_key",
        "inline_example_without_field",
        "empty_dataset_file",
        pytest.param("missing_dataset_field", marks=pytest.mark.slow),  # found after loading the data
        pytest.param("malformed_jsonl", marks=pytest.mark.slow),
        pytest.param("text_not_a_string", marks=pytest.mark.slow),
        pytest.param("eval_fraction_leaves_no_training_rows", marks=pytest.mark.slow),
        pytest.param("lora_target_module_missing", marks=pytest.mark.slow),  # found after loading the model
    ],
)
def test_bad_config_exits_78_with_one_clear_line_and_touches_nothing(tiny: Path, work: Path, case: str):
    config, field = _bad(tiny, work, case)
    out = work / "out"
    for name in ("checkpoint-5", "checkpoint-10"):  # one committed-looking, one torn: neither may change
        (out / name).mkdir(parents=True)
        (out / name / "optimizer.pt").write_bytes(b"x" * 100)
    (out / "checkpoint-5" / "COMMITTED.json").write_text('{"step": 5}')
    before = snapshot(out)
    proc = run(config, out, tag=case)
    assert proc.popen.returncode == 78, proc.tail()
    lines = [line for line in proc.log_path.read_text().splitlines() if line.startswith("config error: ")]
    assert len(lines) == 1 and lines[0].startswith(f"config error: {field}"), proc.tail()
    term = proc.termination()
    assert term["reason"] == "ConfigError" and field in term["message"]
    assert snapshot(out) == before


@pytest.mark.slow
def test_config_error_does_not_create_a_missing_output_dir(tiny: Path, work: Path) -> None:
    config, field = _bad(tiny, work, "lora_target_module_missing")  # the last check: after the model load
    out = work / "not-yet"
    proc = run(config, out, tag="fresh")
    assert proc.popen.returncode == 78, proc.tail()
    assert field in proc.termination()["message"]
    assert not out.exists()


def test_resume_never_refuses_a_directory_with_committed_checkpoints(reference: Reference, work: Path):
    out = work / "out"
    shutil.copytree(reference.output_dir, out)
    shutil.rmtree(out / "final")
    proc = run(reference.config, out, "--resume", "never", tag="never")
    assert proc.popen.returncode == 78
    assert "--resume never" in json.loads(proc.term_path.read_text())["message"]


@pytest.mark.slow
def test_chat_messages_eval_best_checkpoint_and_merged_model(tiny: Path, work: Path) -> None:
    """The other spec paths in one short run: messages format, eval split, load_best_model_at_end (the best
    checkpoint survives retention with save_total_limit 1), merge_adapter."""
    config = yaml.safe_load((tiny / "trainer-config.yaml").read_text())
    config["model"]["merge_adapter"] = True
    config["dataset"].update({"format": "messages", "eval_fraction": 0.05})
    config["training"].update(
        {
            "max_steps": 9,
            "save_steps": 3,
            "eval_strategy": "steps",
            "eval_steps": 3,
            "load_best_model_at_end": True,
            "metric_for_best_model": "loss",
            "save_total_limit": 1,
        }
    )
    path = work / "chat.yaml"
    path.write_text(yaml.safe_dump(config))
    out = work / "out"
    proc = run(path, out, tag="chat")
    assert proc.popen.returncode == 0, proc.tail()
    evals = [e for e in proc.events() if e.get("event") == "train_log" and "eval_loss" in e]
    assert [e["step"] for e in evals] == [3, 6, 9]
    best = min(evals, key=lambda e: e["eval_loss"])["step"]
    kept = sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))
    assert kept == sorted({best, 9})
    assert (out / "final" / "merged" / "config.json").is_file()
    assert (out / "final" / "adapter_model.safetensors").is_file()
