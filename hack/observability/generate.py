#!/usr/bin/env python3
"""Write the dashboard JSON and the alert rules (chart template + plain file) from fto_observability.

hack/observability/generate.py          # (re)write the files
hack/observability/generate.py --check  # exit 1 and name the files that are out of date
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from fto_observability import alerts, dashboard  # noqa: E402
from fto_observability.paths import DASHBOARD_JSON, REPO, RULE_TEMPLATE, RULES_FILE  # noqa: E402


def outputs() -> dict[Path, str]:
    return {
        DASHBOARD_JSON: dashboard.render(),
        RULE_TEMPLATE: alerts.render_helm_template(),
        RULES_FILE: alerts.render_rules_file(),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only check that the files are up to date")
    a = ap.parse_args(argv)
    stale = []
    for path, text in outputs().items():
        current = path.read_text() if path.exists() else None
        if current == text:
            continue
        if a.check:
            stale.append(path.relative_to(REPO))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path.relative_to(REPO)}")
    if stale:
        names = ", ".join(map(str, stale))
        print(f"out of date (run hack/observability/generate.py): {names}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
