"""Helpers for the real-process trainer tests: the tiny model, real signals, real files.

One uninterrupted reference run is shared by the whole session; every interrupted run is compared with it.
All processes run with OMP_NUM_THREADS=1 (bit-exact resume needs the same thread count).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TRAINER = [str(BIN / "finetune-trainer")]

# The reference schedule: 40 steps, a checkpoint every 5, keep 2.
MAX_STEPS = 40
SAVE_STEPS = 5


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FTO_TEST_")}
    env.update(
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        PYTHONUNBUFFERED="1",
        PYTHONWARNINGS="ignore",
    )
    env.update(extra)
    return env


def hub_env(hf_home: Path, endpoint: str) -> dict[str, str]:
    """base_env for a trainer that talks to the hub stand-in at `endpoint`: online, no proxy, and no HF_ or
    TRANSFORMERS_ setting (offline flags, a token) taken from the caller's environment."""
    env = {k: v for k, v in base_env().items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    for key in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        env.pop(key, None)
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(hf_home), NO_PROXY="127.0.0.1,localhost")
    return env


def write_config(
    path: Path, tiny: Path, max_steps: int = MAX_STEPS, save_steps: int = SAVE_STEPS, **training: Any
) -> Path:
    config = yaml.safe_load((tiny / "trainer-config.yaml").read_text())
    config["training"].update(
        {"max_steps": max_steps, "save_steps": save_steps, "save_total_limit": 2, "logging_steps": 1}
    )
    config["training"].update(training)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@dataclass
class Proc:
    popen: subprocess.Popen[bytes]
    log_path: Path
    term_path: Path
    output_dir: Path

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
        return out

    def wait_event(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 90.0
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events():
                if predicate(event):
                    return event
            if self.popen.poll() is not None:
                for event in self.events():
                    if predicate(event):
                        return event
                raise AssertionError(f"process exited {self.popen.returncode} first; log:\n{self.tail()}")
            time.sleep(0.02)
        raise AssertionError(f"timed out waiting; log:\n{self.tail()}")

    def wait_step(self, step: int, timeout: float = 90.0) -> dict[str, Any]:
        return self.wait_event(lambda e: e.get("event") == "train_log" and e.get("step", 0) >= step, timeout)

    def signal(self, sig: int) -> None:
        self.popen.send_signal(sig)

    def wait(self, timeout: float = 120.0) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            raise AssertionError(f"trainer did not exit in {timeout}s; log:\n{self.tail()}") from None

    def termination(self) -> dict[str, Any]:
        return dict(json.loads(self.term_path.read_text()))

    def losses(self) -> dict[int, float]:
        return {e["step"]: e["loss"] for e in self.events() if e.get("event") == "train_log" and "loss" in e}

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])


def start(
    config: Path,
    output_dir: Path,
    *args: str,
    env: dict[str, str] | None = None,
    tag: str = "run",
) -> Proc:
    log_path = output_dir.parent / f"{output_dir.name}.{tag}.log"
    term_path = output_dir.parent / f"{output_dir.name}.{tag}.term"
    term_path.unlink(missing_ok=True)
    cmd = [
        *TRAINER,
        "--config",
        str(config),
        "--output-dir",
        str(output_dir),
        "--termination-message-path",
        str(term_path),
        *args,
    ]
    fh = open(log_path, "wb")  # noqa: SIM115 - closed when the process object goes away
    popen = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env or base_env(), cwd=REPO)
    return Proc(popen, log_path, term_path, output_dir)


def run(
    config: Path, output_dir: Path, *args: str, env: dict[str, str] | None = None, tag: str = "run"
) -> Proc:
    proc = start(config, output_dir, *args, env=env, tag=tag)
    proc.wait()
    return proc


def adapter(output_dir: Path) -> dict[str, Any]:
    from safetensors.numpy import load_file

    return dict(load_file(str(output_dir / "final" / "adapter_model.safetensors")))


def assert_same_adapter(a: Path, b: Path) -> None:
    import numpy as np

    left, right = adapter(a), adapter(b)
    assert left.keys() == right.keys()
    for key in left:
        assert np.array_equal(left[key], right[key]), (
            f"{key} differs (max {abs(left[key] - right[key]).max()})"
        )


@dataclass
class Reference:
    tiny: Path
    config: Path
    output_dir: Path
    proc: Proc
    losses: dict[int, float]


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny")
    subprocess.run(
        [str(BIN / "finetune-tiny-model"), "--output", str(out), "--examples", "256"],
        check=True,
        env=base_env(),
        capture_output=True,
    )
    return out


@pytest.fixture(scope="session")
def reference(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Reference:
    work = tmp_path_factory.mktemp("reference")
    config = write_config(work / "config.yaml", tiny)
    proc = run(config, work / "out")
    assert proc.popen.returncode == 0, proc.tail()
    return Reference(tiny, config, work / "out", proc, proc.losses())


@pytest.fixture
def work(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    shutil.rmtree(tmp_path, ignore_errors=True)
