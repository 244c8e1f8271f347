"""The shipped Grafana dashboard and Prometheus alert rules of finetune-operator, as code.

`finetune-observability --write` generates the chart's dashboard and PrometheusRule template and
deploy/prometheus/ from these modules (`--check` proves the committed files are up to date):

- `dashboard`: one list of panels with their PromQL; `build_dashboard()` → Grafana JSON.
- `alerts`:   the alert rules; `build_rules()` → a rules file, `render_helm_template()` → the chart template.
- `promql`:   the metric names an expression selects, Grafana variable substitution.
- `generate`: the command.

The metrics they may select are `finetune_api.metric_catalog`'s (the same list the operator and the trainer
register from).
"""
