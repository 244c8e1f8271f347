"""The dataset repo hub_repos.py builds is deterministic and shaped like Abirate/english_quotes (the gpt2
repo's determinism was checked by hand: two builds, equal sha256 for every file; its loading is tested in
tests/trainer/test_trainer_hub.py)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.harness import hub_repos


def test_english_quotes_is_deterministic_and_has_the_real_columns(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    for folder in (first, second):
        folder.mkdir()
        hub_repos.build_english_quotes(folder)
    assert sorted(p.name for p in first.iterdir()) == ["README.md", "quotes.jsonl"]
    for name in ("README.md", "quotes.jsonl"):
        assert (first / name).read_bytes() == (second / name).read_bytes()
    rows = [json.loads(line) for line in (first / "quotes.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == hub_repos.QUOTES_ROWS
    for row in rows:
        assert set(row) == {"quote", "author", "tags"}
        assert isinstance(row["quote"], str) and row["quote"].startswith("“")
        assert isinstance(row["author"], str) and row["tags"] and all(isinstance(t, str) for t in row["tags"])
    assert len({row["quote"] for row in rows}) > len(rows) // 2  # varied text, not one line repeated
