"""Write the shipped Grafana dashboard and alert rules (chart template + plain rules file).

    finetune-observability --write   # (re)write the files under --root (default: the current directory)
    finetune-observability --check   # exit 1 and name the files that are out of date

Both first check that every panel and rule selects only metrics of `finetune_api.metric_catalog` (exit 2
naming the unknown ones): a dashboard querying a metric nobody exports shows "no data" forever.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from finetune_api.generated_files import sync
from finetune_api.metric_catalog import SERIES

from finetune_observability import alerts, dashboard, promql

#: Where the generated files live, relative to the repository root.
CHART = Path("charts") / "finetune-operator"
DASHBOARD_JSON = CHART / "dashboards" / "finetune-operator.json"
RULE_TEMPLATE = CHART / "templates" / "prometheusrule.yaml"
RULES_FILE = Path("deploy") / "prometheus" / "finetune-operator.rules.yml"


def outputs() -> dict[Path, str]:
    """Relative path → the text it must have."""
    return {
        DASHBOARD_JSON: dashboard.render(),
        RULE_TEMPLATE: alerts.render_helm_template(),
        RULES_FILE: alerts.render_rules_file(),
    }


def unknown_metrics() -> dict[str, set[str]]:
    """Where a panel or an alert selects a finetune_* series the catalog does not list: {where: names}."""
    exprs = [(f"panel {p.title!r}", t.expr) for p, t in dashboard.all_targets()]
    exprs += [(f"alert {r.alert}", r.expr) for r in alerts.RULES]
    found: dict[str, set[str]] = {}
    for where, expr in exprs:
        unknown = promql.metric_names(expr) - set(SERIES)
        if unknown:
            found.setdefault(where, set()).update(unknown)
    return found


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="rewrite the generated files")
    mode.add_argument("--check", action="store_true", help="exit 1 if a generated file is out of date")
    ap.add_argument("--root", type=Path, default=Path("."), help="repository root")
    a = ap.parse_args(argv)
    unknown = unknown_metrics()
    if unknown:
        for where, names in unknown.items():
            print(
                f"{where} selects metrics not in finetune_api.metric_catalog: {sorted(names)}",
                file=sys.stderr,
            )
        return 2
    return sync(a.root, outputs(), write=a.write, command="finetune-observability")


if __name__ == "__main__":
    raise SystemExit(main())
