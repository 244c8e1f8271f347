"""Start-up before/after a change: the trainer's own `startup` line (process start → first step begins, and
its phases) for two source trees, run interleaved A, B, A, B … so machine load affects both alike.

    git archive <before-commit> operator trainer-image | tar -x -C /tmp/before
    .venv/bin/python -m bench.recovery.startup_ab --before /tmp/before --runs 4 \
        --out bench/recovery/results-startup-ab.json

Each run is the tiny offline model (`finetune-tiny-model`), 2 steps, as a pod runs it: the config names its
FineTuneJob (`job:`, so status reporting is set up) and KUBERNETES_SERVICE_HOST/PORT are set (to a closed
loopback port: nothing is sent anywhere; without a service account token the in-cluster config then fails,
which both trees log and go on from).
"""

from __future__ import annotations

import argparse
import json
import os
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

from tests.harness.hub_server import closed_loopback_port  # noqa: E402


def run_once(tree: Path, config: Path, output_dir: Path, port: int) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FTO_TEST_")}
    env.update(
        PYTHONPATH=os.pathsep.join([str(tree / "operator"), str(tree / "trainer-image")]),
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONWARNINGS="ignore",
        KUBERNETES_SERVICE_HOST="127.0.0.1",
        KUBERNETES_SERVICE_PORT=str(port),
    )
    command = [sys.executable, "-m", "finetune_trainer.cli", "--config", str(config)]
    command += ["--output-dir", str(output_dir), "--resume", "never"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    events = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    startup = next((e for e in events if e.get("event") == "startup"), None)
    if done.returncode != 0 or startup is None:
        raise RuntimeError(f"trainer from {tree} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return {"startup_s": startup["seconds"], "phases": startup["phases"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--before", type=Path, required=True, help="a tree with operator/ and trainer-image/")
    parser.add_argument("--after", type=Path, default=REPO)
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    runs: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory(prefix="startup-ab-") as tmp:
        work = Path(tmp)
        subprocess.run(
            [sys.executable, "-m", "finetune_trainer.tiny", "--output", str(work / "tiny")],
            env={
                **os.environ,
                "PYTHONPATH": os.pathsep.join([str(REPO / "trainer-image"), str(REPO / "operator")]),
            },
            check=True,
            capture_output=True,
        )
        config = yaml.safe_load((work / "tiny" / "trainer-config.yaml").read_text())
        config["training"].update({"max_steps": 2, "save_steps": 2})
        config["job"] = {"namespace": "bench", "name": "startup-ab"}
        path = work / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        port = closed_loopback_port()
        for i in range(args.runs):
            for name, tree in (("before", args.before), ("after", args.after)):
                result = run_once(tree, path, work / f"out-{name}-{i}", port)
                runs[name].append(result)
                print(f"{name} {i}: startup {result['startup_s']} s, imports {result['phases']['imports']} s")

    def median(name: str, key: str) -> float:
        values = [r["startup_s"] if key == "startup" else r["phases"][key] for r in runs[name]]
        return round(statistics.median(values), 3)

    summary = {
        name: {"startup_s_median": median(name, "startup"), "imports_s_median": median(name, "imports")}
        for name in runs
    }
    summary["startup_saved_s"] = round(
        summary["before"]["startup_s_median"] - summary["after"]["startup_s_median"], 3
    )
    result = {
        "benchmark": "bench/recovery/startup_ab.py",
        "command": "python -m bench.recovery.startup_ab " + " ".join(argv or sys.argv[1:]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": f"{os.cpu_count()} cores, OMP_NUM_THREADS=1",
        "summary": summary,
        "runs": runs,
    }
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
