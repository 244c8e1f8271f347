"""Restart cost without a cluster: trainer launch → training again, first attempt vs later attempts, with the
~500 MB `gpt2` and `Abirate/english_quotes` served by the local hub stand-in, cache on and off in one run.

    .venv/bin/python -m bench.recovery.bench_restart --repetitions 2 --attempts 3 \
        --out bench/recovery/results-restart.json

Each repetition runs both modes, one after the other, each as a chain of real trainer processes on one output
directory (what the operator's attempts do on the job's volume):

- attempt 1 starts with an empty output directory; it trains until a checkpoint is committed, gets SIGTERM,
  commits an emergency checkpoint and exits 75; attempts 2…N are started with `--resume auto` on the same
  directory and stopped the same way (the last one too);
- cache on: one HF_HOME for the chain (as on the job's volume: `HF_HOME=/checkpoints/.cache/hf`), empty at
  attempt 1; cache off: a fresh, empty HF_HOME for every attempt (what an emptyDir cache did).

Per attempt, from this process's monotonic clock and the trainer's JSON log: launch → `startup` (the first
step begins: training again), launch → the first step's `train_log` (a step done), the trainer's own phase
seconds (`startup.phases`), and the file bytes and requests the hub served to the model and dataset repos
(from the server's counters, snapshot before and after the attempt). Reports medians per (mode, first/later)
and the ratios later/first and cache off/on.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.harness import hub_repos  # noqa: E402
from tests.harness.hub_server import HubServer  # noqa: E402
from tests.trainer.trainer_harness import hub_env  # noqa: E402

REPOS = (hub_repos.GPT2, hub_repos.ENGLISH_QUOTES)
EXIT_PREEMPTED = 75


def trainer_config(path: Path) -> Path:
    """examples/job.yaml's model, dataset and LoRA, a checkpoint every step (stopped long before the end)."""
    config = hub_repos.example_trainer_config(max_steps=1000)
    path.write_text(yaml.safe_dump(config))
    return path


def trainer_env(hub_url: str, hf_home: Path) -> dict[str, str]:
    """The trainer tests' hub environment, running this checkout's code."""
    env = hub_env(hf_home, hub_url)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "operator"), str(REPO / "trainer-image")])
    return env


def read_events(log_path: Path) -> list[dict[str, Any]]:
    events = []
    for line in log_path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                events.append(json.loads(line))
    return events


def hub_snapshot(hub: HubServer) -> dict[str, tuple[int, int, int]]:
    out = {}
    for repo_id in REPOS:
        traffic = hub.traffic(repo_id)
        out[repo_id] = (traffic.total_file_bytes, traffic.requests, traffic.resolve_heads)
    return out


def run_attempt(
    hub: HubServer, config: Path, output_dir: Path, hf_home: Path, log_path: Path, timeout: float
) -> dict[str, Any]:
    """One trainer process: launch, wait for a committed checkpoint after the first step it trains, SIGTERM,
    wait for exit 75. Times are seconds from launch."""
    before = hub_snapshot(hub)
    command = [sys.executable, "-m", "finetune_trainer.cli", "--config", str(config)]
    command += ["--output-dir", str(output_dir), "--resume", "auto"]
    with log_path.open("wb") as log_file:
        launched = time.monotonic()
        proc = subprocess.Popen(
            command, env=trainer_env(hub.url, hf_home), stdout=log_file, stderr=subprocess.STDOUT
        )
        seen: dict[str, float] = {}
        start_step: int | None = None
        deadline = launched + timeout
        try:
            while time.monotonic() < deadline and proc.poll() is None:
                for event in read_events(log_path):
                    name = event.get("event")
                    if name == "startup" and "startup" not in seen:
                        seen["startup"] = time.monotonic() - launched
                        start_step = int(event.get("step", 0))
                    if name == "train_log" and start_step is not None and "first_step" not in seen:
                        seen["first_step"] = time.monotonic() - launched
                    if (
                        name == "checkpoint_committed"
                        and start_step is not None
                        and int(event.get("step", 0)) > start_step
                    ):
                        seen["checkpoint"] = time.monotonic() - launched
                if "checkpoint" in seen:
                    break
                time.sleep(0.05)
            if "checkpoint" not in seen:
                raise RuntimeError(f"attempt did not reach a committed step; log {log_path}")
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    after = hub_snapshot(hub)
    events = read_events(log_path)
    startup = next(e for e in events if e.get("event") == "startup")
    if code != EXIT_PREEMPTED:
        raise RuntimeError(f"attempt exited {code}, expected {EXIT_PREEMPTED}; log {log_path}")
    hub_fetch = {
        repo_id: {
            "file_bytes": after[repo_id][0] - before[repo_id][0],
            "requests": after[repo_id][1] - before[repo_id][1],
            "resolve_heads": after[repo_id][2] - before[repo_id][2],
        }
        for repo_id in REPOS
    }
    return {
        "resumed_from_step": start_step,
        "launch_to_training_s": round(seen["startup"], 3),
        "launch_to_first_step_done_s": round(seen["first_step"], 3),
        "trainer_startup_s": startup["seconds"],
        # what the cache and the restart path decide; the imports swing with the 2 shared cores' load
        "startup_without_imports_s": round(startup["seconds"] - startup["phases"]["imports"], 3),
        "phases": startup["phases"],
        "hub": hub_fetch,
        "hub_file_bytes": sum(v["file_bytes"] for v in hub_fetch.values()),
        "hub_requests": sum(v["requests"] for v in hub_fetch.values()),
        "exit_code": code,
    }


def run_chain(
    hub: HubServer, work: Path, mode: str, attempts: int, timeout: float, tag: str
) -> list[dict[str, Any]]:
    chain = work / f"{tag}-{mode}"
    chain.mkdir()
    config = trainer_config(chain / "config.yaml")
    output_dir = chain / "out"
    results = []
    for attempt in range(1, attempts + 1):
        hf_home = chain / ("hf" if mode == "cache_on" else f"hf-{attempt}")
        result = run_attempt(hub, config, output_dir, hf_home, chain / f"attempt-{attempt}.log", timeout)
        result.update(mode=mode, attempt=attempt)
        if mode == "cache_off":
            shutil.rmtree(hf_home, ignore_errors=True)  # ~500 MB each
        print(
            f"{tag} {mode} attempt {attempt}: training again {result['launch_to_training_s']} s "
            f"(trainer {result['trainer_startup_s']} s), hub bytes {result['hub_file_bytes']}, "
            f"phases {result['phases']}",
            flush=True,
        )
        results.append(result)
    shutil.rmtree(chain, ignore_errors=True)
    return results


def summarize(attempts: list[dict[str, Any]]) -> dict[str, Any]:
    def median(mode: str, later: bool, key: str) -> float:
        values = [a[key] for a in attempts if a["mode"] == mode and (a["attempt"] > 1) == later]
        return round(statistics.median(values), 3)

    def phase_medians(mode: str, later: bool) -> dict[str, float]:
        chosen = [a["phases"] for a in attempts if a["mode"] == mode and (a["attempt"] > 1) == later]
        names = sorted({name for phases in chosen for name in phases})
        return {n: round(statistics.median(p.get(n, 0.0) for p in chosen), 3) for n in names}

    out: dict[str, Any] = {}
    for mode in ("cache_on", "cache_off"):
        first, later = median(mode, False, "launch_to_training_s"), median(mode, True, "launch_to_training_s")
        out[mode] = {
            "first_attempt": {
                "launch_to_training_s_median": first,
                "hub_file_bytes_median": median(mode, False, "hub_file_bytes"),
                "phases_median": phase_medians(mode, False),
            },
            "later_attempts": {
                "launch_to_training_s_median": later,
                "hub_file_bytes_median": median(mode, True, "hub_file_bytes"),
                "hub_file_bytes_max": max(
                    a["hub_file_bytes"] for a in attempts if a["mode"] == mode and a["attempt"] > 1
                ),
                "phases_median": phase_medians(mode, True),
            },
            "later_vs_first": round(later / first, 3),
        }
        for key, later_flag in (("first_attempt", False), ("later_attempts", True)):
            out[mode][key]["startup_without_imports_s_median"] = median(
                mode, later_flag, "startup_without_imports_s"
            )
        out[mode]["later_vs_first_without_imports"] = round(
            out[mode]["later_attempts"]["startup_without_imports_s_median"]
            / out[mode]["first_attempt"]["startup_without_imports_s_median"],
            3,
        )
    out["later_cache_off_vs_on"] = round(
        out["cache_off"]["later_attempts"]["launch_to_training_s_median"]
        / out["cache_on"]["later_attempts"]["launch_to_training_s_median"],
        3,
    )
    out["later_cache_off_vs_on_without_imports"] = round(
        out["cache_off"]["later_attempts"]["startup_without_imports_s_median"]
        / out["cache_on"]["later_attempts"]["startup_without_imports_s_median"],
        3,
    )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repetitions", type=int, default=2)
    parser.add_argument("--attempts", type=int, default=3, help="attempts per chain (1 first + N-1 restarts)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per attempt")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    root = hub_repos.hub_root(REPOS)
    attempts: list[dict[str, Any]] = []
    started = time.time()
    with HubServer(root) as hub, tempfile.TemporaryDirectory(prefix="bench-restart-") as tmp:
        model_bytes = sum(e.size for e in hub.repo(hub_repos.GPT2).files.values())
        for repetition in range(1, args.repetitions + 1):
            for mode in ("cache_on", "cache_off"):
                chain = run_chain(hub, Path(tmp), mode, args.attempts, args.timeout, f"rep{repetition}")
                for item in chain:
                    item["repetition"] = repetition
                attempts.extend(chain)
    result = {
        "benchmark": "bench/recovery/bench_restart.py",
        "command": "python -m bench.recovery.bench_restart " + " ".join(argv or sys.argv[1:]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "machine": f"{os.cpu_count()} cores, OMP_NUM_THREADS=1",
        "model": {"repo": hub_repos.GPT2, "repo_bytes": model_bytes},
        "dataset": hub_repos.ENGLISH_QUOTES,
        "summary": summarize(attempts),
        "attempts": attempts,
    }
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(json.dumps(result["summary"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
