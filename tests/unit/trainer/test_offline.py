"""A job whose model and data are local never reaches for the hub; a hub job keeps the environment's say."""

from __future__ import annotations

import os

import pytest
from finetune_api import TrainerConfig
from finetune_trainer.build import go_offline_when_local, needs_hub


def config(model: str, **dataset: object) -> TrainerConfig:
    return TrainerConfig.model_validate({"model": {"name_or_path": model}, "dataset": dataset})


@pytest.mark.parametrize(
    ("model", "dataset", "hub"),
    [
        ("/models/tiny", {"path": "/data/d.jsonl"}, False),
        ("/models/tiny", {"examples": [{"text": "x"}]}, False),
        ("gpt2", {"path": "/data/d.jsonl"}, True),
        ("/models/tiny", {"name": "tatsu-lab/alpaca"}, True),
    ],
)
def test_needs_hub(model: str, dataset: dict[str, object], hub: bool) -> None:
    assert needs_hub(config(model, **dataset)) is hub


def test_offline_only_when_local(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    go_offline_when_local(config("gpt2", path="/d.jsonl"))
    assert "HF_HUB_OFFLINE" not in os.environ
    go_offline_when_local(config("/models/tiny", path="/d.jsonl"))
    assert os.environ["HF_HUB_OFFLINE"] == "1"
