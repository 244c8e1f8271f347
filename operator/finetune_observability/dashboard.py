"""The Grafana dashboard: one list of panels with their PromQL, built into Grafana's JSON model.

Tests iterate `PANELS` (every query parses in a real Prometheus, references only catalogued metrics and,
against the local cluster, returns data) and docs/observability.md is checked against the same list.
Over 400 lines because `PANELS` is one reviewed list of 19 panels (their queries and descriptions); split
across modules it would no longer read as the dashboard it is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

UID = "finetune-operator"
TITLE = "finetune-operator / FineTuneJobs"
DS = {"type": "prometheus", "uid": "${datasource}"}
#: The selector every query carries: the dashboard's namespace and finetunejob variables
#: (NSSEL for metrics without a finetunejob label: finetune_jobs counts jobs per namespace and phase).
SEL = 'namespace=~"$namespace", finetunejob=~"$finetunejob"'
NSSEL = 'namespace=~"$namespace"'


@dataclass(frozen=True)
class Target:
    expr: str
    legend: str = ""
    instant: bool = False
    format: str = "time_series"  # or "table", "heatmap"


@dataclass(frozen=True)
class Panel:
    title: str
    kind: str  # Grafana panel type: timeseries, stat, table, heatmap
    targets: tuple[Target, ...]
    description: str
    unit: str = "short"
    width: int = 12
    height: int = 8
    row: str = ""
    stack: bool = False
    bars: bool = False
    options: dict[str, Any] = field(default_factory=dict)


def _q(expr: str) -> str:
    return expr.replace("{SEL}", "{" + SEL + "}").replace("{NSSEL}", "{" + NSSEL + "}")


def _quantiles(metric: str, by: str = "le") -> tuple[Target, ...]:
    return tuple(
        Target(
            _q(f"histogram_quantile({q}, sum by ({by}) (rate({metric}_bucket{{SEL}}[$__rate_interval])))"),
            f"p{int(q * 100)}",
        )
        for q in (0.5, 0.95, 0.99)
    )


ROW_JOBS = "Jobs"
ROW_DISRUPTIONS = "Disruptions and recovery"
ROW_CHECKPOINTS = "Checkpoints"
ROW_TRAINER = "Trainer (PodMonitor)"

PANELS: tuple[Panel, ...] = (
    # --- jobs -------------------------------------------------------------------------------------------
    Panel(
        "Jobs by phase",
        "stat",
        (Target(_q("sum by (phase) (finetune_jobs{NSSEL})"), "{{phase}}", instant=True),),
        "FineTuneJobs in the selected namespaces by phase now (finetune_jobs; it counts jobs per "
        "namespace, so the FineTuneJob variable does not filter it).",
        width=8,
        height=6,
        row=ROW_JOBS,
    ),
    Panel(
        "Jobs by phase over time",
        "timeseries",
        (Target(_q("sum by (phase) (finetune_jobs{NSSEL})"), "{{phase}}"),),
        "The same count over time: Restarting bands are disruptions, a growing Failed band needs a look.",
        width=8,
        height=6,
        row=ROW_JOBS,
        stack=True,
    ),
    Panel(
        "Per job",
        "table",
        (
            Target(
                _q("max by (namespace, finetunejob) (finetune_training_step{SEL})"),
                "step",
                instant=True,
                format="table",
            ),
            Target(
                _q("sum by (namespace, finetunejob) (finetune_restarts_total{SEL})"),
                "restarts",
                instant=True,
                format="table",
            ),
            Target(
                _q("sum by (namespace, finetunejob) (finetune_lost_steps_total{SEL})"),
                "lost steps",
                instant=True,
                format="table",
            ),
            Target(
                _q("max by (namespace, finetunejob) (finetune_checkpoints{SEL})"),
                "checkpoints",
                instant=True,
                format="table",
            ),
            Target(
                _q("sum by (namespace, finetunejob) (finetune_emergency_saves_late_total{SEL})"),
                "late emergency saves",
                instant=True,
                format="table",
            ),
        ),
        "One line per job: step, restarts (all causes), steps lost, committed checkpoints retained, "
        "emergency saves that missed their deadline.",
        width=8,
        height=6,
        row=ROW_JOBS,
        options={"sortBy": [{"displayName": "finetunejob", "desc": False}]},
    ),
    Panel(
        "Training progress (optimizer step)",
        "timeseries",
        (
            Target(
                _q("max by (namespace, finetunejob) (finetune_training_step{SEL})"),
                "{{namespace}}/{{finetunejob}}",
            ),
        ),
        "The last step each job's trainer reported. Flat stretches are time without training (pending, "
        "restarting); a drop is work lost since the last committed checkpoint.",
        width=24,
        row=ROW_JOBS,
    ),
    # --- disruptions ------------------------------------------------------------------------------------
    Panel(
        "Restarts by cause",
        "timeseries",
        (
            Target(
                _q("sum by (cause) (increase(finetune_restarts_total{SEL}[$__rate_interval]))"), "{{cause}}"
            ),
        ),
        "Trainer pods replaced per interval, by cause: preemption (spot reclaim, drain, eviction, node "
        "lost), hostOOM (kernel OOM kill), cudaOOM (GPU out of memory), error, infrastructure (the "
        "container could not start, the image could not be pulled in time).",
        width=12,
        row=ROW_DISRUPTIONS,
        stack=True,
        bars=True,
    ),
    Panel(
        "Restarts by cause (since creation)",
        "stat",
        (Target(_q("sum by (cause) (finetune_restarts_total{SEL})"), "{{cause}}", instant=True),),
        "Restart counters of the selected jobs, by cause.",
        width=6,
        row=ROW_DISRUPTIONS,
    ),
    Panel(
        "Restart streak",
        "timeseries",
        (Target(_q("max by (namespace, finetunejob) (finetune_restart_streak{SEL})"), "{{finetunejob}}"),),
        "Pod ends in a row for the same reason without training progress; back to 0 once the trainer "
        "steps again. From 3 on, admission failures and evictions wait a doubling backoff "
        "(FineTuneJobRestartStorm).",
        width=6,
        row=ROW_DISRUPTIONS,
    ),
    Panel(
        "Steps lost per restart",
        "stat",
        (
            Target(
                _q(
                    "sum(increase(finetune_lost_steps_total{SEL}[$__range])) / "
                    "(sum(increase(finetune_restarts_total{SEL}[$__range])) > 0)"
                ),
                "steps/restart",
                instant=True,
            ),
        ),
        "Optimizer steps trained but not covered by a committed checkpoint, divided by the restarts in "
        "the dashboard's time range. High values: save more often (spec.checkpoint).",
        width=6,
        row=ROW_DISRUPTIONS,
    ),
    Panel(
        "Steps lost",
        "timeseries",
        (
            Target(
                _q(
                    "sum by (namespace, finetunejob) "
                    "(increase(finetune_lost_steps_total{SEL}[$__rate_interval]))"
                ),
                "{{namespace}}/{{finetunejob}}",
            ),
        ),
        "Steps lost per interval and job: each bar is one (or more) pod ends.",
        width=12,
        row=ROW_DISRUPTIONS,
        bars=True,
    ),
    Panel(
        "Recovery time (pod end → training again)",
        "timeseries",
        (
            *_quantiles("finetune_recovery_duration_seconds"),
            Target(
                _q(
                    "sum(rate(finetune_recovery_duration_seconds_sum{SEL}[$__rate_interval])) / "
                    "sum(rate(finetune_recovery_duration_seconds_count{SEL}[$__rate_interval]))"
                ),
                "mean",
            ),
        ),
        "Seconds from a trainer pod's end to its replacement training again (scheduling, image start, "
        "model load, resume). Quantiles from the finetune_recovery_duration_seconds histogram.",
        unit="s",
        width=12,
        row=ROW_DISRUPTIONS,
    ),
    # --- checkpoints ------------------------------------------------------------------------------------
    Panel(
        "Checkpoint save latency p50 / p95 / p99",
        "timeseries",
        _quantiles("finetune_checkpoint_save_duration_seconds"),
        "How long a checkpoint save takes (write, fsync, commit marker), from the "
        "finetune_checkpoint_save_duration_seconds histogram. The save blocks training.",
        unit="s",
        width=12,
        row=ROW_CHECKPOINTS,
    ),
    Panel(
        "Checkpoint save latency heatmap",
        "heatmap",
        (
            Target(
                _q(
                    "sum by (le) (increase(finetune_checkpoint_save_duration_seconds_bucket{SEL}"
                    "[$__rate_interval]))"
                ),
                "{{le}}",
                format="heatmap",
            ),
        ),
        "Saves per latency bucket over time: a second band appearing is a slow volume or a bigger "
        "checkpoint.",
        unit="s",
        width=12,
        row=ROW_CHECKPOINTS,
        options={"yAxis": {"unit": "s"}, "cellGap": 1},
    ),
    Panel(
        "Checkpoints retained vs saved",
        "timeseries",
        (
            Target(
                _q("sum by (namespace, finetunejob) (finetune_checkpoints{SEL})"), "{{finetunejob}} retained"
            ),
            Target(
                _q("sum by (namespace, finetunejob) (finetune_checkpoints_saved_total{SEL})"),
                "{{finetunejob}} saved",
            ),
        ),
        "Committed checkpoints on the volume now (bounded by save_total_limit) against checkpoints "
        "committed since creation.",
        width=12,
        row=ROW_CHECKPOINTS,
    ),
    Panel(
        "Checkpoint size",
        "timeseries",
        (
            Target(
                _q("max by (namespace, finetunejob) (finetune_checkpoint_size_bytes{SEL})"),
                "{{namespace}}/{{finetunejob}}",
            ),
        ),
        "Bytes of the newest committed checkpoint (adapter, optimizer and scheduler state, RNG state).",
        unit="bytes",
        width=12,
        row=ROW_CHECKPOINTS,
    ),
    # --- trainer ---------------------------------------------------------------------------------------
    Panel(
        "Trainer step time",
        "timeseries",
        (
            Target(
                _q(
                    "sum by (namespace, finetunejob) "
                    "(rate(finetune_trainer_step_duration_seconds_sum{SEL}[$__rate_interval])) / "
                    "sum by (namespace, finetunejob) "
                    "(rate(finetune_trainer_step_duration_seconds_count{SEL}[$__rate_interval]))"
                ),
                "{{namespace}}/{{finetunejob}} mean",
            ),
            Target(
                _q(
                    "histogram_quantile(0.95, sum by (namespace, finetunejob, le) "
                    "(rate(finetune_trainer_step_duration_seconds_bucket{SEL}[$__rate_interval])))"
                ),
                "{{namespace}}/{{finetunejob}} p95",
            ),
        ),
        "Seconds per optimizer step (saves excluded), from the trainer pod's own metrics port "
        "(finetune_trainer_step_duration_seconds; needs the PodMonitor).",
        unit="s",
        width=8,
        row=ROW_TRAINER,
    ),
    Panel(
        "Trainer tokens/s",
        "timeseries",
        (
            Target(
                _q("sum by (namespace, finetunejob) (finetune_trainer_tokens_per_second{SEL})"),
                "{{namespace}}/{{finetunejob}}",
            ),
        ),
        "Input tokens per second over the last step, from the trainer pod "
        "(finetune_trainer_tokens_per_second; needs the PodMonitor).",
        width=8,
        row=ROW_TRAINER,
    ),
    Panel(
        "Training loss",
        "timeseries",
        (
            Target(
                _q("max by (namespace, finetunejob) (finetune_trainer_loss{SEL})"),
                "{{namespace}}/{{finetunejob}}",
            ),
        ),
        "The last logged training loss (finetune_trainer_loss; needs the PodMonitor). After a resume it "
        "continues where the checkpoint left it.",
        width=8,
        row=ROW_TRAINER,
    ),
    Panel(
        "Trainer last save",
        "timeseries",
        (
            Target(
                _q("max by (namespace, finetunejob) (finetune_trainer_last_save_duration_seconds{SEL})"),
                "{{namespace}}/{{finetunejob}}",
            ),
        ),
        "Seconds the trainer's last committed save took, as the trainer times it "
        "(finetune_trainer_last_save_duration_seconds; needs the PodMonitor).",
        unit="s",
        width=12,
        row=ROW_TRAINER,
    ),
    Panel(
        "Trainer progress vs last checkpoint",
        "timeseries",
        (
            Target(
                _q("max by (namespace, finetunejob) (finetune_trainer_step{SEL})"), "{{finetunejob}} step"
            ),
            Target(
                _q("max by (namespace, finetunejob) (finetune_trainer_last_checkpoint_step{SEL})"),
                "{{finetunejob}} last checkpoint",
            ),
        ),
        "The trainer's step against the step of its newest committed checkpoint: the gap is the work a "
        "preemption right now would lose (finetune_trainer_step, finetune_trainer_last_checkpoint_step).",
        width=12,
        row=ROW_TRAINER,
    ),
)


def all_targets() -> list[tuple[Panel, Target]]:
    return [(p, t) for p in PANELS for t in p.targets]


def _variables() -> list[dict[str, Any]]:
    def query_var(name: str, label: str, query: str) -> dict[str, Any]:
        return {
            "name": name,
            "label": label,
            "type": "query",
            "datasource": DS,
            "query": query,
            "definition": query,
            "refresh": 2,
            "sort": 1,
            "includeAll": True,
            "multi": True,
            "allValue": ".*",
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
            "hide": 0,
            "options": [],
            "regex": "",
        }

    return [
        {
            "name": "datasource",
            "label": "Data source",
            "type": "datasource",
            "query": "prometheus",
            # No `current`: Grafana then selects the default Prometheus (the schema has no empty `current`).
            "hide": 0,
            "refresh": 1,
            "regex": "",
            "options": [],
        },
        # finetune_restarts_total has a series per job and cause from the moment the operator sees a job.
        query_var("namespace", "Namespace", "label_values(finetune_restarts_total, namespace)"),
        query_var(
            "finetunejob",
            "FineTuneJob",
            'label_values(finetune_restarts_total{namespace=~"$namespace"}, finetunejob)',
        ),
    ]


def _panel_json(p: Panel, pid: int, x: int, y: int) -> dict[str, Any]:
    targets = []
    for i, t in enumerate(p.targets):
        tj: dict[str, Any] = {
            "datasource": DS,
            "expr": t.expr,
            "legendFormat": t.legend or "__auto",
            "refId": chr(ord("A") + i),
            "range": not t.instant,
            "instant": t.instant,
        }
        if t.format != "time_series":
            tj["format"] = t.format
        targets.append(tj)
    custom: dict[str, Any] = {}
    if p.kind == "timeseries":
        custom = {
            "drawStyle": "bars" if p.bars else "line",
            "fillOpacity": 60 if p.bars else 10,
            "lineWidth": 1,
            "showPoints": "never",
            "spanNulls": False,
            "stacking": {"mode": "normal" if (p.stack or p.bars) else "none", "group": "A"},
        }
    # Each panel type's options as Grafana's schema for it requires them (its defaults where we have no
    # preference): the tests check the JSON against that schema (tests/harness/grafana_schema.py).
    options: dict[str, Any] = {
        "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True, "calcs": []},
        "tooltip": {"mode": "multi", "sort": "desc"},
    }
    if p.kind == "stat":
        options = {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "none",
            "textMode": "value_and_name",
            "orientation": "auto",
            "justifyMode": "auto",
            "wideLayout": True,
            "showPercentChange": False,
            "percentChangeColorMode": "standard",
        }
    elif p.kind == "table":
        options = {"showHeader": True, "frameIndex": 0}
        custom = {"align": "auto", "inspect": False}
    elif p.kind == "heatmap":
        options = {
            "calculate": False,
            "color": {
                "mode": "scheme",
                "scheme": "Oranges",
                "fill": "dark-orange",
                "exponent": 0.5,
                "steps": 64,
                "reverse": False,
            },
            "showValue": "auto",
            "legend": {"show": True},
            "tooltip": {"mode": "single", "yHistogram": False, "showColorScale": False},
            "exemplars": {"color": "rgba(255,0,255,0.7)"},
        }
    options.update(p.options)
    panel: dict[str, Any] = {
        "id": pid,
        "type": p.kind,
        "title": p.title,
        "description": p.description,
        "datasource": DS,
        "gridPos": {"h": p.height, "w": p.width, "x": x, "y": y},
        "targets": targets,
        "options": options,
        "fieldConfig": {"defaults": {"unit": p.unit, "custom": custom}, "overrides": []},
    }
    if p.kind == "table":
        # One row per job: merge the instant queries on their labels, one column per query.
        renames = {f"Value #{chr(ord('A') + i)}": t.legend for i, t in enumerate(p.targets)}
        panel["transformations"] = [
            {"id": "merge", "options": {}},
            {"id": "organize", "options": {"excludeByName": {"Time": True}, "renameByName": renames}},
        ]
    return panel


def build_dashboard() -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    pid, x, y, row_h = 1, 0, 0, 0
    current_row = None
    for p in PANELS:
        if p.row != current_row:
            if x:
                y, x = y + row_h, 0
            current_row = p.row
            panels.append(
                {
                    "id": pid,
                    "type": "row",
                    "title": p.row,
                    "collapsed": False,
                    "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                    "panels": [],
                }
            )
            pid, y, row_h = pid + 1, y + 1, 0
        if x + p.width > 24:
            y, x, row_h = y + row_h, 0, 0
        panels.append(_panel_json(p, pid, x, y))
        pid, x, row_h = pid + 1, x + p.width, max(row_h, p.height)
    return {
        "uid": UID,
        "title": TITLE,
        "tags": ["finetune-operator", "kubernetes", "training"],
        "description": "FineTuneJobs on spot GPUs: phases, restarts by cause, checkpoint save latency, "
        "lost work and recovery. Generated by finetune-observability.",
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "30s",
        "timezone": "",
        "templating": {"list": _variables()},
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "links": [],
        "panels": panels,
    }


def render() -> str:
    return json.dumps(build_dashboard(), indent=2, ensure_ascii=False) + "\n"
