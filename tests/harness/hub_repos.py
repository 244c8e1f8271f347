"""Hub repositories the project builds for its local hub (hub_server.py): nothing can be downloaded here,
so the names examples/job.yaml uses are built locally, deterministically, and cached.

    gpt2                      the real GPT-2 architecture (transformers' GPT2Config defaults: 12 layers, width
                              768, 1024 positions, vocab 50257; 124M parameters), random weights from a fixed
                              seed, model.safetensors in float32 (~500 MB, as the real repo's); a byte-level
                              BPE tokenizer trained here with `tokenizers` (vocab.json, merges.txt,
                              tokenizer.json) that AutoTokenizer loads
    Abirate/english_quotes    quotes.jsonl with `quote`, `author`, `tags` like the real dataset (generated
                              text, 3000 rows) and a README.md card
    acme/tiny-gpt2            the tiny model of `finetune-tiny-model` (2 layers, width 64): for tests where
                              speed matters

Layout: $FTO_CACHE (default ~/.cache/finetune-operator)/hub-repos/v{BUILDER_VERSION}/{models,datasets}/{id}/,
which `HubServer(root=hub_root())` serves. A repo is built once (under a lock, into a temporary folder that is
renamed when complete); bumping BUILDER_VERSION rebuilds everything.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

BUILDER_VERSION = 2
GPT2 = "gpt2"
ENGLISH_QUOTES = "Abirate/english_quotes"
TINY = "acme/tiny-gpt2"
SEED = 1234
QUOTES_ROWS = 3000
TOKENIZER_VOCAB = 8000  # trained on the quotes; the model keeps GPT-2's 50257 embedding rows
EOS = "<|endoftext|>"


def example_trainer_config(max_steps: int) -> dict[str, object]:
    """examples/job.yaml's model, dataset and LoRA as a TrainerConfig served by this hub: short sequences
    and a checkpoint every step, so a step takes seconds on one CPU thread and a stop after the first step
    always has a committed checkpoint to resume from."""
    return {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "TrainerConfig",
        "model": {"name_or_path": GPT2},
        "dataset": {"name": ENGLISH_QUOTES, "split": "train", "text_field": "quote"},
        "lora": {"r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "target_modules": ["c_attn"]},
        "training": {
            "max_steps": max_steps,
            "save_steps": 1,
            "per_device_train_batch_size": 2,
            "max_length": 32,
            "logging_steps": 1,
        },
    }


def cache_root() -> Path:
    base = Path(os.environ.get("FTO_CACHE", Path.home() / ".cache" / "finetune-operator"))
    return base / "hub-repos" / f"v{BUILDER_VERSION}"


def hub_root(repos: tuple[str, ...] = (GPT2, ENGLISH_QUOTES, TINY)) -> Path:
    """The cached repo tree with `repos` built (each built on first use)."""
    root = cache_root()
    builders: dict[str, tuple[str, Callable[[Path], None]]] = {
        GPT2: ("models", build_gpt2),
        ENGLISH_QUOTES: ("datasets", build_english_quotes),
        TINY: ("models", build_tiny),
    }
    for repo_id in repos:
        kind, build = builders[repo_id]
        _ensure(root / kind / repo_id, build)
    return root


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # other test sessions may build the same repo
        yield


def _ensure(target: Path, build: Callable[[Path], None]) -> None:
    if target.is_dir():
        return
    with _locked(cache_root() / ".locks" / target.relative_to(cache_root()).as_posix().replace("/", "--")):
        if target.is_dir():
            return
        partial = target.parent / f".{target.name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        build(partial)
        partial.rename(target)


# ------------------------------------------------------------------------------------------------ quotes


def _phrases(text: str) -> list[str]:
    return text.split("|")


_SUBJECTS = _phrases(
    "life|love|courage|kindness|truth|happiness|friendship|hope|wisdom|patience|silence|laughter|memory|"
    "freedom|honesty|faith|music|art|time|change|fear|doubt|grief|joy|curiosity|gratitude|forgiveness|"
    "ambition|humility|imagination|knowledge"
)
_IMAGES = _phrases(
    "a river|a quiet voice|a small lamp|the long road|a door|the song|a garden|the bridge|a letter|the map|"
    "a seed|the fire|a window|the harbor|a mirror|the compass|an old coat|the first snow"
)
_ACTIONS = _phrases(
    "carries us home|opens when we listen|shines in the dark|grows with every step|never asks for more|"
    "remembers the morning|waits for the brave|forgives the stranger|teaches the patient|outlasts the storm|"
    "finds the lost|heals what words cannot|counts the quiet hours|keeps the promise|lights the kitchen|"
    "crosses the mountain|answers the question|holds the small hand|warms the winter|forgets the anger"
)
_CONNECTORS = _phrases("begins where|ends only when|grows each time|fades whenever|returns after|speaks when")
_EVENTS = _phrases(
    "we stop pretending|the children laugh|nobody is watching|the city sleeps|the last train leaves|"
    "a stranger smiles|the rain begins|the book is closed|we choose to stay|the old songs return"
)
_CODAS = _phrases(
    "and that is enough|so keep walking|even on ordinary days|whatever the world says|if you let it|"
    "more often than we think|long after we are gone|one small step at a time|and asks nothing back|"
    "before the sun rises"
)
_TAGS = _phrases(
    "life|love|courage|kindness|truth|happiness|friendship|hope|wisdom|humor|inspiration|philosophy|"
    "change|time|art|music|books|faith"
)
_SYLLABLES = _phrases("ma|ri|to|sen|la|vo|ne|dar|el|quin|ho|bri|sa|ta|wen|ko")


def _person(rng: random.Random) -> str:
    def word() -> str:
        return "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()

    return f"{word()} {word()}"


def _clause(rng: random.Random) -> str:
    if rng.random() < 0.7:
        return f"{rng.choice(_SUBJECTS)} is {rng.choice(_IMAGES)} that {rng.choice(_ACTIONS)}"
    return f"{rng.choice(_SUBJECTS)} {rng.choice(_CONNECTORS)} {rng.choice(_EVENTS)}"


def generate_quotes(rows: int = QUOTES_ROWS, seed: int = SEED) -> list[dict[str, object]]:
    rng = random.Random(seed)
    authors = [_person(rng) for _ in range(300)]
    out: list[dict[str, object]] = []
    for _ in range(rows):
        text = _clause(rng).capitalize()
        if rng.random() < 0.5:
            text += f"; {_clause(rng)}"
        if rng.random() < 0.4:
            text += f", {rng.choice(_CODAS)}"
        tags = sorted(rng.sample(_TAGS, rng.randint(1, 5)))
        out.append({"quote": f"“{text}.”", "author": rng.choice(authors), "tags": tags})
    return out


def build_english_quotes(dest: Path) -> None:
    lines = [json.dumps(row, ensure_ascii=False) for row in generate_quotes()]
    (dest / "quotes.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (dest / "README.md").write_text(
        "---\nlanguage:\n- en\nlicense: cc-by-4.0\ntask_categories:\n- text-generation\n---\n"
        "# english_quotes (local stand-in)\n\nGenerated quotes with `quote`, `author` and `tags` columns, "
        "built\nby finetune-operator's tests/harness/hub_repos.py for its local hub. Not the real dataset.\n"
    )


# -------------------------------------------------------------------------------------------------- gpt2


def build_gpt2(dest: Path) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    corpus = [f"{row['quote']} {row['author']}" for row in generate_quotes(20 * QUOTES_ROWS, seed=SEED + 1)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, unk_token=EOS)
    tokenizer.model_max_length = 1024
    tokenizer.save_pretrained(dest)
    tok.model.save(str(dest))  # vocab.json + merges.txt, as the real repo ships them

    eos_id = tok.token_to_id(EOS)
    config = GPT2Config(bos_token_id=eos_id, eos_token_id=eos_id)  # the architecture: defaults throughout
    torch.manual_seed(SEED)
    model = GPT2LMHeadModel(config)
    model.save_pretrained(dest, safe_serialization=True)


def build_tiny(dest: Path) -> None:
    import tempfile

    from finetune_trainer.tiny import build

    with tempfile.TemporaryDirectory() as tmp:
        build(Path(tmp), examples=16)
        for item in (Path(tmp) / "model").iterdir():
            shutil.copy2(item, dest / item.name)
