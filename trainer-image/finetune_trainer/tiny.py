"""`finetune-tiny-model`: a tiny GPT-2 + tokenizer + dataset built offline and deterministically.

There is no hub access here and no PyPI package ships a usable causal LM, so tests, the demo and the benchmark
use this one: 2 layers, width 64, a ByteLevel BPE vocabulary of ~2000 trained with `tokenizers` on generated
text. Layout of DIR:

    DIR/model/              save_pretrained(): config, weights, tokenizer (with a small chat template)
    DIR/data.jsonl          {"text": ...} per line (and "messages" for the chat format)
    DIR/trainer-config.yaml a TrainerConfig for `finetune-trainer --config`
    DIR/job.yaml            the same as a FineTuneJob manifest (paths as seen inside a pod: --pod-dir)
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path
from typing import Any

import yaml

VOCAB_SIZE = 2000
SPECIAL = "<|endoftext|>"
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

_SUBJECTS = [
    "the cat",
    "a dog",
    "the model",
    "my friend",
    "the river",
    "a robot",
    "the teacher",
    "an old man",
]
_VERBS = ["sees", "likes", "builds", "follows", "paints", "moves", "finds", "remembers", "counts", "opens"]
_OBJECTS = ["the red box", "a small boat", "the green tree", "a bright star", "the long road", "a warm cup"]
_PLACES = [
    "in the morning",
    "near the sea",
    "under the bridge",
    "at the market",
    "after the rain",
    "at night",
]
_SYLLABLES = [
    "ka",
    "to",
    "ri",
    "mu",
    "sen",
    "lo",
    "va",
    "shi",
    "ne",
    "por",
    "da",
    "gu",
    "lin",
    "ez",
    "ha",
    "quo",
]


def _name(rng: random.Random) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4))).capitalize()


def generate_sentences(n: int, seed: int = 1234) -> list[str]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        words = [rng.choice(_SUBJECTS), "named", _name(rng), rng.choice(_VERBS), rng.choice(_OBJECTS)]
        words.append(rng.choice(_PLACES))
        if i % 3 == 0:
            words.append(f"and counts to {rng.randint(1, 99)}")
        out.append(" ".join(words).capitalize() + ".")
    return out


def build_tokenizer(corpus: list[str]) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[SPECIAL],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=SPECIAL, eos_token=SPECIAL, pad_token=SPECIAL, unk_token=SPECIAL
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.model_max_length = 256
    return fast


def build_model(vocab_size: int, seed: int = 0, n_layer: int = 2, n_embd: int = 64, n_head: int = 2) -> Any:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=256,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    return GPT2LMHeadModel(config)


def example_training(data_path: str, model_path: str) -> dict[str, Any]:
    return {
        "model": {"name_or_path": model_path, "torch_dtype": "float32"},
        "dataset": {"path": data_path, "text_field": "text"},
        "lora": {"r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "target_modules": ["c_attn"]},
        "training": {
            "max_steps": 60,
            "per_device_train_batch_size": 4,
            "gradient_accumulation_steps": 1,
            "learning_rate": 5.0e-3,
            "max_length": 64,
            "logging_steps": 1,
            "save_strategy": "steps",
            "save_steps": 10,
            "save_total_limit": 2,
        },
    }


def build(output: Path, pod_dir: str | None = None, examples: int = 512) -> None:
    output.mkdir(parents=True, exist_ok=True)
    corpus = generate_sentences(4000, seed=99)
    tokenizer = build_tokenizer(corpus)
    model = build_model(len(tokenizer))
    model_dir = output / "model"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)

    lines = []
    for i, text in enumerate(generate_sentences(examples, seed=7)):
        question = f"What happens in story {i}?"
        lines.append(
            json.dumps(
                {
                    "text": text,
                    "messages": [
                        {"role": "user", "content": question},
                        {"role": "assistant", "content": text},
                    ],
                }
            )
        )
    (output / "data.jsonl").write_text("\n".join(lines) + "\n")

    local = example_training(str((output / "data.jsonl").resolve()), str(model_dir.resolve()))
    config = {"apiVersion": "finetune.dev/v1alpha1", "kind": "TrainerConfig", **local}
    (output / "trainer-config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    base = pod_dir or str(output.resolve())
    spec = example_training(f"{base}/data.jsonl", f"{base}/model")
    spec["checkpoint"] = {"volumeSize": "1Gi", "terminationGracePeriodSeconds": 30}
    spec["resources"] = {"gpus": 0, "cpu": "1", "memory": "2Gi"}
    job = {"apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "tiny"}}
    job["spec"] = spec
    (output / "job.yaml").write_text(yaml.safe_dump(job, sort_keys=False))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="finetune-tiny-model", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--output", required=True, help="directory to write model/, data.jsonl and configs to"
    )
    parser.add_argument(
        "--pod-dir", default=None, help="where DIR is mounted inside a pod (paths in job.yaml); default: DIR"
    )
    parser.add_argument("--examples", type=int, default=512, help="dataset size")
    args = parser.parse_args(argv)
    build(Path(args.output), args.pod_dir, args.examples)
    print(json.dumps({"event": "tiny_model_built", "output": str(Path(args.output).resolve())}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
