"""Observability for finetune-operator: the metric catalog, the Grafana dashboard and the alert rules.

Everything the chart and deploy/prometheus/ ship is generated from these modules by
`python hack/observability/generate.py` (and `--check` proves the committed files are up to date):

- `catalog`:  the documented metric names, types and labels (design.md §3), one place.
- `dashboard`: one list of panels with their PromQL; `build_dashboard()` → Grafana JSON.
- `alerts`:   the alert rules; `build_rules()` → a rules file, `render_helm_template()` → the chart template.
- `promql`:   helpers the tests use (variable substitution, metric names in an expression).
- `local_prometheus`: start Debian's `prometheus` on a free loopback port scraping given targets.
"""
