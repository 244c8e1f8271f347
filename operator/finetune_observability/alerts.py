"""Alert rules for FineTuneJobs, one source for the plain rules file and the chart's PrometheusRule.

Thresholds are parameters (`<<name>>` in the text): the plain file (deploy/prometheus/) gets the defaults,
the chart template gets a Helm expression reading `monitoring.prometheusRule.*` with the same default, and
tests build rules with small windows to see alerts fire in seconds.

Counters that are created at their first increment (a labelled child appears with value 1) are invisible to
`increase()` for that first increment; the restart and checkpoint rules therefore also count a series that did
not exist one window ago by its current value (`x unless x offset W`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import yaml

GROUP = "finetune-operator.rules"
BY = "namespace, finetunejob"


@dataclass(frozen=True)
class Param:
    default: str
    helm: str  # a Helm expression ($r is .Values.monitoring.prometheusRule, or an empty dict)
    values_key: str
    doc: str


PARAMS: dict[str, Param] = {
    "no_checkpoint_window": Param(
        "1800s",
        "{{ mul (default 600 $r.checkpointIntervalSeconds) (default 3 $r.noCheckpointFactor) }}s",
        "checkpointIntervalSeconds x noCheckpointFactor",
        "FineTuneJobNoCheckpoint fires after this long training without a committed checkpoint: "
        "N (noCheckpointFactor, 3) x the expected interval (checkpointIntervalSeconds, 600).",
    ),
    "training_gap": Param(
        "10m",
        '{{ default "10m" $r.trainingGap }}',
        "trainingGap",
        "FineTuneJobNoCheckpoint counts a job as training while its step changes at "
        "least once per this window (longer than your slowest step).",
    ),
    "restart_window": Param(
        "15m",
        '{{ default "15m" $r.restartLoopWindow }}',
        "restartLoopWindow",
        "Window of FineTuneJobRestartLoop.",
    ),
    "restart_threshold": Param(
        "3",
        "{{ default 3 $r.restartLoopThreshold }}",
        "restartLoopThreshold",
        "FineTuneJobRestartLoop fires above this many restarts (any cause) in the window.",
    ),
    "storm_threshold": Param(
        "3",
        "{{ default 3 $r.restartStormThreshold }}",
        "restartStormThreshold",
        "FineTuneJobRestartStorm fires at this many pod ends in a row for one reason without training "
        "progress (the operator starts backing off at 3).",
    ),
    "latency_factor": Param(
        "2",
        "{{ default 2 $r.saveLatencyFactor }}",
        "saveLatencyFactor",
        "FineTuneCheckpointSaveLatencyRegression: p95 over the last hour > factor x p95 over the day before.",
    ),
    "latency_min_saves": Param(
        "3",
        "{{ default 3 $r.saveLatencyMinSaves }}",
        "saveLatencyMinSaves",
        "Saves needed in the last hour before the latency rule judges.",
    ),
    "runbook_base": Param(
        "https://github.com/finetune-operator/finetune-operator/blob/main/docs/observability.md",
        '{{ default "https://github.com/finetune-operator/finetune-operator/blob/main/docs/observability.md"'
        " $r.runbookBaseURL }}",
        "runbookBaseURL",
        "Base of each alert's runbook_url (docs/observability.md; point it at your own copy).",
    ),
}

#: How long FineTuneJobEmergencySaveLate stays firing after a late emergency save.
LATE_SAVE_WINDOW = "1h"

#: FineTuneJobCheckpointUploadsFailing: failed uploads within this window (clears this long after the last).
UPLOAD_WINDOW = "5m"

#: Fixed windows of the latency rule (short: now; long: the day before, for the baseline).
LATENCY_SHORT = "1h"
LATENCY_LONG = "1d"

H = "finetune_checkpoint_save_duration_seconds"


@dataclass(frozen=True)
class Rule:
    alert: str
    expr: str
    for_: str
    severity: str
    summary: str
    description: str
    runbook: str  # the hint: what to look at first

    @property
    def anchor(self) -> str:
        return self.alert.lower()


RULES: tuple[Rule, ...] = (
    Rule(
        "FineTuneJobNoCheckpoint",
        # "Running" per job = training: its step changed in every <<training_gap>> over the whole window
        # (a job that waited Pending part of the window, or whose trainer is stuck, is not at risk).
        f"""min_over_time(
  (changes(finetune_training_step[<<training_gap>>]) > bool 0)[<<no_checkpoint_window>>:1m]
) == 1
and on ({BY})
(finetune_training_step offset <<no_checkpoint_window>>)
unless on ({BY})
(
  increase(finetune_checkpoints_saved_total[<<no_checkpoint_window>>]) > 0
  or
  (finetune_checkpoints_saved_total > 0
     unless finetune_checkpoints_saved_total offset <<no_checkpoint_window>>)
)""",
        "1m",
        "warning",
        "FineTuneJob {{ $labels.namespace }}/{{ $labels.finetunejob }} has trained for "
        "<<no_checkpoint_window>> without committing a checkpoint.",
        "The job has been training (its step advancing) for the whole window without a committed "
        "checkpoint: a preemption now would lose all the work since the last one.",
        "Check the trainer's logs for save errors (disk full, permission denied on the checkpoint volume), "
        "the save interval in spec.checkpoint against the step time, and `kubectl describe ftj` for the "
        "last committed checkpoint.",
    ),
    Rule(
        "FineTuneJobRestartLoop",
        f"""sum by ({BY}) (
  (finetune_restarts_total unless finetune_restarts_total offset <<restart_window>>)
  or
  increase(finetune_restarts_total[<<restart_window>>])
) > <<restart_threshold>>""",
        "0m",
        "warning",
        "FineTuneJob {{ $labels.namespace }}/{{ $labels.finetunejob }} restarted "
        "{{ $value | humanize }} times in <<restart_window>>.",
        "The job's trainer pod keeps being replaced. Causes are in finetune_restarts_total{cause} "
        "(preemption, hostOOM, cudaOOM, error, infrastructure) and the job's Events.",
        "`kubectl describe ftj` (restarts by cause, Events), then: preemption → spot capacity churn, "
        "consider another zone/instance type; hostOOM/cudaOOM → raise memory or lower the batch; "
        "error → the trainer's logs of the previous attempt (`kubectl logs <job>-<attempt>`).",
    ),
    Rule(
        "FineTuneJobRestartStorm",
        f"max by ({BY}) (finetune_restart_streak) >= <<storm_threshold>>",
        "0m",
        "warning",
        "FineTuneJob {{ $labels.namespace }}/{{ $labels.finetunejob }}: {{ $value }} pod ends in a row "
        "for the same reason without training.",
        "The job's pods keep ending for the same reason before the trainer makes progress: admission "
        "failures (UnexpectedAdmissionError, OutOf<resource>), kubelet evictions, containers that cannot "
        "start. The operator backs off (doubling) and prefers another node; the job is not training.",
        "`kubectl describe ftj` (status.streak, the RestartStorm Event names the reason and the node), then "
        "`kubectl describe node <node>`: a GPU gone bad or its device plugin (admission), disk or memory "
        "pressure (evictions), the container runtime or GPU driver (StartError). Cordon the node if it "
        "keeps failing.",
    ),
    Rule(
        "FineTuneCheckpointSaveLatencyRegression",
        f"""(
  histogram_quantile(0.95, sum by ({BY}, le) (rate({H}_bucket[{LATENCY_SHORT}])))
  >
  <<latency_factor>> * histogram_quantile(0.95,
    sum by ({BY}, le) (rate({H}_bucket[{LATENCY_LONG}] offset {LATENCY_SHORT})))
)
and on ({BY})
(sum by ({BY}) (increase({H}_count[{LATENCY_SHORT}])) >= <<latency_min_saves>>)""",
        "15m",
        "warning",
        "Checkpoint saves of {{ $labels.namespace }}/{{ $labels.finetunejob }} got slower: "
        "p95 {{ $value | humanizeDuration }}.",
        f"The p95 save latency over the last {LATENCY_SHORT} is more than <<latency_factor>>x the p95 of the "
        f"{LATENCY_LONG} before. Saves block training, and a slow save risks the grace period on preemption.",
        "Look at the volume (storage class, IOPS limits, a full or noisy node disk) and at the checkpoint "
        "size panel (a larger checkpoint is slower); compare the grace period with the p99 save time.",
    ),
    Rule(
        "FineTuneJobEmergencySaveLate",
        # The operator exports this counter for every job from status.lateEmergencySaves (0 from the start),
        # so increase() sees the first late save too.
        f"sum by ({BY}) (increase(finetune_emergency_saves_late_total[{LATE_SAVE_WINDOW}])) > 0",
        "0m",
        "warning",
        "FineTuneJob {{ $labels.namespace }}/{{ $labels.finetunejob }}: an emergency checkpoint missed its "
        f"save deadline in the last {LATE_SAVE_WINDOW}.",
        "After a SIGTERM (preemption, drain, deletion) the trainer did not commit its emergency checkpoint "
        "before the save deadline: the job resumed from an older checkpoint and redid the steps since.",
        "`kubectl describe ftj` (status.lastEmergencySave: deadlineSeconds; the EmergencySaveLate Event), "
        "then compare the save time (checkpoint save panel) with the deadline: give the nodes' real notice "
        "(spec.scheduling.cloud or preemptionNoticeSeconds) and a longer grace period where the cloud allows "
        "it, keep background saves on, or save more often so less is lost.",
    ),
    Rule(
        "FineTuneJobCheckpointUploadsFailing",
        # The trainer exports the counter from its start (0), so increase() sees the first failure too.
        f"sum by ({BY}) (increase(finetune_trainer_checkpoint_upload_failures_total[{UPLOAD_WINDOW}])) > 0",
        "2m",
        "warning",
        "FineTuneJob {{ $labels.namespace }}/{{ $labels.finetunejob }}: checkpoint uploads to the object "
        "store are failing.",
        f"The trainer could not upload committed checkpoints to spec.checkpoint.objectStore in the last "
        f"{UPLOAD_WINDOW}. It retries with backoff and training goes on, but the durable copy falls behind: "
        "losing the checkpoint volume now loses the work since the last uploaded checkpoint.",
        "The trainer's `checkpoint_upload_failed` log lines name the error: the endpoint or the network "
        "(connection refused, timeout), the credentials Secret (403), the bucket (404). "
        "finetune_trainer_durable_checkpoint_step shows how far the durable copy is behind.",
    ),
    Rule(
        "FineTuneJobFailed",
        # `by (namespace, finetunejob)`: one alert per job if finetune_jobs has a finetunejob label, else
        # (it counts jobs per namespace today) one per namespace whose value is the number of Failed jobs.
        f'sum by ({BY}) (finetune_jobs{{phase="Failed"}}) > 0',
        "1m",
        "warning",
        "{{ $value }} FineTuneJob(s) failed in {{ $labels.namespace }}"
        "{{ with $labels.finetunejob }} ({{ . }}){{ end }}.",
        "A job reached phase Failed: a config error, or its error/OOM budget is spent. It will not retry.",
        "`kubectl get ftj -n <namespace>` lists the Failed ones; `kubectl describe ftj <name>` shows "
        "status.reason and the message. Fix the spec and re-create the job (it resumes from its last "
        "committed checkpoint if the volume was kept).",
    ),
)


def _fill(text: str, values: dict[str, str]) -> str:
    return re.sub(r"<<(\w+)>>", lambda m: values[m.group(1)], text)


def _rule_dict(r: Rule) -> dict[str, Any]:
    return {
        "alert": r.alert,
        "expr": r.expr,
        "for": r.for_,
        "labels": {"severity": r.severity},
        "annotations": {
            "summary": r.summary,
            "description": r.description,
            "runbook": r.runbook,
            "runbook_url": f"<<runbook_base>>#{r.anchor}",
        },
    }


def build_rules(overrides: dict[str, str] | None = None, rules: tuple[Rule, ...] = RULES) -> dict[str, Any]:
    """The rules file as a dict, thresholds filled with the defaults or `overrides`."""
    values = {k: p.default for k, p in PARAMS.items()} | (overrides or {})
    groups = [{"name": GROUP, "rules": [_rule_dict(r) for r in rules]}]
    return yaml.safe_load(_fill(_dump({"groups": groups}), values))


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, s: str) -> yaml.ScalarNode:
    if "\n" in s:
        return dumper.represent_scalar("tag:yaml.org,2002:str", s, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", s, style='"' if "{{" in s or "<<" in s else None)


_Dumper.add_representer(str, _str)


def _dump(obj: Any) -> str:
    return yaml.dump(obj, Dumper=_Dumper, sort_keys=False, width=1000, allow_unicode=True)


HEADER = "# Generated by finetune-observability from operator/finetune_observability/alerts.py."


def render_rules_file(overrides: dict[str, str] | None = None) -> str:
    return f"{HEADER} Do not edit.\n" + _dump(build_rules(overrides))


def _helm_escape(text: str) -> str:
    """Prometheus' own {{ ... }} templates must reach the PrometheusRule verbatim through Helm."""
    return re.sub(r"\{\{(.*?)\}\}", lambda m: "{{`{{" + m.group(1) + "}}`}}", text)


def render_helm_template() -> str:
    groups = [{"name": GROUP, "rules": [_rule_dict(r) for r in RULES]}]
    body = _helm_escape(_dump({"groups": groups}))
    body = _fill(body, {k: p.helm for k, p in PARAMS.items()})
    body = "\n".join(("  " + line) if line else line for line in body.splitlines())
    return f"""{{{{- /* {HEADER[2:]} Do not edit. */ -}}}}
{{{{- $m := .Values.monitoring | default dict }}}}
{{{{- $r := $m.prometheusRule | default dict }}}}
{{{{- if and $r.enabled (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1/PrometheusRule") }}}}
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: {{{{ include "finetune-operator.fullname" . }}}}
  namespace: {{{{ .Release.Namespace }}}}
  labels:
    {{{{- include "finetune-operator.labels" . | nindent 4 }}}}
    {{{{- with $r.labels }}}}
    {{{{- toYaml . | nindent 4 }}}}
    {{{{- end }}}}
  {{{{- with $r.annotations }}}}
  annotations:
    {{{{- toYaml . | nindent 4 }}}}
  {{{{- end }}}}
spec:
{body}
{{{{- end }}}}
"""
