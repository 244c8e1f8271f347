"""TrainerConfig → model, tokenizer, datasets, LoraConfig, SFTConfig; what the user must fix → ConfigError.

Over 400 lines: every translation from the config to transformers/trl/peft objects, with the ConfigError
for each field the user can get wrong next to the field's use.
"""

from __future__ import annotations

import json
import math
import os
import socket
from pathlib import Path
from typing import Any

from finetune_api.models import is_s3
from finetune_api.trainer_config import TrainerConfig

from finetune_trainer.logs import log, startup

_DATA_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}


class ConfigError(Exception):
    """The config cannot work (exit 78): one line naming the field and the problem."""


def looks_like_local_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or os.path.exists(name)


class HubUnavailable(Exception):
    """The hub (or HF_ENDPOINT) could not be reached or answered 429/5xx: transient, exit 1 (retried)."""


# huggingface_hub's errors that retrying cannot fix (hf_raise_for_status: X-Error-Code RepoNotFound,
# RevisionNotFound, GatedRepo, EntryNotFound; 401 on a repo URL → RepositoryNotFoundError).
_PERMANENT_HUB_ERRORS = {
    "RepositoryNotFoundError",
    "RevisionNotFoundError",
    "GatedRepoError",
    "RemoteEntryNotFoundError",
    "DisabledRepoError",
    "DatasetNotFoundError",
    "HFValidationError",
    "OfflineModeIsEnabled",  # HF_HUB_OFFLINE=1 and the files are not cached: the environment says so
    "FileMetadataError",  # HF_ENDPOINT answered, but not like a hub (no X-Repo-Commit/ETag)
}
# Connection refused, DNS, timeouts, dropped connections (httpx/httpx2 and the builtins under them).
_TRANSIENT_NETWORK_ERRORS = {"TimeoutException", "NetworkError", "RemoteProtocolError", "ProxyError"}
# 408, 429 and 5xx: huggingface_hub's own retry list (_DEFAULT_RETRY_ON_STATUS_CODES) plus the rest of 5xx.
_TRANSIENT_STATUSES = {408, 429}


def _error_chain(error: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    seen: BaseException | None = error
    while seen is not None and len(chain) < 12 and seen not in chain:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    return chain


def _http_status(error: BaseException) -> int | None:
    response = getattr(error, "response", None)
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


def _hub_error_is_permanent(error: BaseException) -> bool:
    """A hub lookup that will fail again on retry: not found, gated/unauthorized, offline without a cache."""
    for seen in _error_chain(error):
        if type(seen).__name__ in _PERMANENT_HUB_ERRORS:
            return True
        if _http_status(seen) in (401, 403):
            return True  # unauthorized / forbidden: the token or the repo's access list must change
    if _hub_error_is_transient(error):
        return False
    for seen in _error_chain(error):
        text = str(seen)
        if (
            "is not a local folder and is not a valid model identifier" in text
            or "offline mode" in text.lower()
        ):
            return True
    return False


def _transient_cause(error: BaseException) -> BaseException | None:
    """The error in the chain showing the hub could not be reached or is failing (connection, DNS, timeout,
    408/429/5xx), or None."""
    for seen in _error_chain(error):
        status = _http_status(seen)
        if status is not None and (status in _TRANSIENT_STATUSES or status >= 500):
            return seen
        if {cls.__name__ for cls in type(seen).__mro__} & _TRANSIENT_NETWORK_ERRORS:
            return seen
        if isinstance(seen, ConnectionError | TimeoutError | socket.gaierror) and (
            type(seen).__name__ not in _PERMANENT_HUB_ERRORS
        ):
            return seen
    return None


def _hub_error_is_transient(error: BaseException) -> bool:
    return _transient_cause(error) is not None


def classify_hub_error(error: BaseException, field: str, name: str) -> BaseException:
    """What to raise instead: ConfigError (78) for what no retry fixes, HubUnavailable (exit 1, retried with
    backoff) for a hub that is down or unreachable, else the error itself."""
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if _hub_error_is_permanent(error):
        return ConfigError(f"{field}: cannot load {name!r}: {first}")
    cause = _transient_cause(error)
    if cause is not None:
        status = _http_status(cause)
        why = f"HTTP {status}" if status is not None else type(cause).__name__
        return HubUnavailable(f"{field}: the hub is unreachable or failing ({why}) loading {name!r}: {first}")
    return error


def needs_hub(config: TrainerConfig) -> bool:
    """Whether the job reads anything from the Hugging Face hub (a hub model id or a hub dataset name); an
    s3:// input comes from the object store, not the hub."""
    model = config.model.name_or_path
    return not (looks_like_local_path(model) or is_s3(model)) or config.dataset.name is not None


def go_offline_when_local(config: TrainerConfig) -> None:
    """A job with only local inputs never touches the network (no hub look-ups, no timeouts on air-gapped
    nodes); a job that names a hub model or dataset keeps whatever the environment says."""
    if not needs_hub(config):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def check_static(config: TrainerConfig) -> None:
    """Checks that need no heavy imports (run before torch is imported, so bad configs fail in a second)."""
    name = config.model.name_or_path
    if looks_like_local_path(name) and not is_s3(name):  # s3://: s3_inputs.check_uris, then the fetch
        path = Path(name).expanduser()
        if not path.is_dir():
            raise ConfigError(f"model.name_or_path: local path {name} does not exist or is not a directory")
        if not (path / "config.json").is_file():
            raise ConfigError(f"model.name_or_path: {name} has no config.json (not a saved model)")
    data = config.dataset
    if data.path is not None and not is_s3(data.path):
        path = Path(data.path).expanduser()
        if not path.exists():
            raise ConfigError(f"dataset.path: {data.path} does not exist")
        if path.is_file():
            check_data_file(path, data.path)
    if data.examples is not None:
        field = data.text_field if data.format == "text" else data.messages_field
        for i, example in enumerate(data.examples):
            if field not in example:
                raise ConfigError(
                    f"dataset.examples[{i}]: has no field {field!r} (dataset.{data.format}_field)"
                )


def check_data_file(path: Path, shown: str) -> None:
    """A dataset file the loaders can read: a known type, not empty. `shown`: how dataset.path named it
    (a local path, or the s3:// URI it was fetched from)."""
    if path.suffix not in _DATA_BUILDERS:
        raise ConfigError(
            f"dataset.path: {shown}: unsupported file type {path.suffix!r} "
            f"(use {', '.join(sorted(_DATA_BUILDERS))})"
        )
    if _is_blank(path):
        raise ConfigError(f"dataset.path: {shown} is empty (no rows)")


def _is_blank(path: Path) -> bool:
    """Empty or only whitespace (datasets fails on these with a bare StopIteration)."""
    size = path.stat().st_size
    if size > 65536:
        return False
    return not path.read_bytes().strip()


def _first_bad_json_line(path: Path) -> str | None:
    """Where a JSON Lines file stops being JSON (only called after datasets failed to read it)."""
    if path.suffix == ".json":
        try:
            json.loads(path.read_text())
            return None
        except ValueError:
            pass  # maybe JSON Lines under a .json name: check line by line
    with path.open("rb") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as error:
                return f"line {number} is not valid JSON ({error})"
            if not isinstance(row, dict):
                return f"line {number} is not a JSON object"
    return None


def check_lora_targets(config: TrainerConfig, model: Any) -> None:
    """Every listed target module must exist in the model (peft ignores a misspelt one if another matches)."""
    targets = config.lora.target_modules
    if not targets or targets == ["all-linear"]:
        return
    names = [name for name, _ in model.named_modules()]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        leaves = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if not list(m.children())})
        raise ConfigError(
            f"lora.target_modules: {', '.join(missing)} not in model {config.model.name_or_path!r} "
            f"(its leaf modules: {', '.join(leaves[:20])})"
        )


def load_tokenizer_and_model(config: TrainerConfig, use_cuda: bool) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    spec = config.model
    token = os.environ.get("HF_TOKEN") or None
    common: dict[str, Any] = {"revision": spec.revision, "trust_remote_code": spec.trust_remote_code}
    if token:
        common["token"] = token
    dtype: Any = spec.torch_dtype
    if dtype != "auto":
        dtype = getattr(torch, dtype)
        if not use_cuda and dtype in (torch.float16, torch.bfloat16):
            log(
                "dtype_downgraded",
                level="warning",
                requested=spec.torch_dtype,
                used="float32",
                reason="no CUDA",
            )
            dtype = torch.float32
    try:
        tokenizer = AutoTokenizer.from_pretrained(spec.name_or_path, **common)
        startup.mark("tokenizer")
        model = AutoModelForCausalLM.from_pretrained(spec.name_or_path, dtype=dtype, **common)
        startup.mark("model_load")  # with the download when it is not cached
    except (OSError, ValueError) as error:
        classified = classify_hub_error(error, "model.name_or_path", spec.name_or_path)
        if classified is error and isinstance(error, ValueError):
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            classified = ConfigError(f"model.name_or_path: cannot load {spec.name_or_path!r}: {first}")
        if classified is error:
            raise
        raise classified from error
    if not use_cuda and next(model.parameters()).dtype in (torch.float16, torch.bfloat16):
        model = model.float()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer, model


def _load_split(config: TrainerConfig, split: str) -> Any:
    import datasets

    data = config.dataset
    token = os.environ.get("HF_TOKEN") or None
    try:
        if data.examples is not None:
            if split != data.split:
                raise ConfigError(f"dataset.eval_split: inline examples have only the split {data.split!r}")
            return datasets.Dataset.from_list(list(data.examples))
        if data.path is not None:
            path = Path(data.path).expanduser()
            if path.is_file():
                builder = _DATA_BUILDERS[path.suffix]
                try:
                    loaded = datasets.load_dataset(builder, data_files={data.split: str(path)})
                except Exception as error:  # a file that does not parse: name the line when it is JSON
                    where = _first_bad_json_line(path) if builder == "json" else None
                    if where is None and builder == "json":
                        raise
                    detail = where or str(error).strip().splitlines()[0]
                    raise ConfigError(f"dataset.path: {data.path}: {detail}") from error
            elif (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
                loaded = datasets.load_from_disk(str(path))
                if isinstance(loaded, datasets.Dataset):
                    return loaded
            else:
                loaded = datasets.load_dataset(str(path))
        else:
            assert data.name is not None
            return datasets.load_dataset(data.name, data.config_name, split=split, token=token)
    except ConfigError:
        raise
    except Exception as error:
        if data.name is not None:
            classified = classify_hub_error(error, "dataset.name", data.name)
            if classified is not error:
                raise classified from error
        if isinstance(error, FileNotFoundError | ValueError):
            first = (str(error).splitlines() or [type(error).__name__])[0]
            raise ConfigError(f"dataset: cannot load split {split!r}: {first}") from error
        raise
    if split not in loaded:
        field = "dataset.split" if split == data.split else "dataset.eval_split"
        raise ConfigError(f"{field}: split {split!r} not found (have {', '.join(loaded.keys())})")
    return loaded[split]


def load_datasets(config: TrainerConfig) -> tuple[Any, Any | None]:
    """Train (and eval) datasets reduced to the one column SFTTrainer reads ('text' or 'messages')."""
    data = config.dataset
    train = _load_split(config, data.split)
    field = data.text_field if data.format == "text" else data.messages_field
    name = f"dataset.{data.format if data.format == 'text' else 'messages'}_field"
    if field not in train.column_names:
        raise ConfigError(
            f"{name}: column {field!r} not in the dataset (columns: {', '.join(train.column_names)})"
        )
    if len(train) == 0:
        raise ConfigError(f"dataset.split: split {data.split!r} is empty")
    if data.format == "text":
        feature = train.features[field]
        if getattr(feature, "dtype", None) not in ("string", "large_string"):
            kind = getattr(feature, "dtype", None) or type(feature).__name__
            raise ConfigError(f"{name}: column {field!r} holds {kind} values, not text strings")
    eval_ds = None
    if data.eval_split is not None:
        eval_ds = _load_split(config, data.eval_split)
        if field not in eval_ds.column_names:
            raise ConfigError(f"dataset.eval_split: column {field!r} not in split {data.eval_split!r}")
    elif data.eval_fraction is not None:
        rows = len(train)
        held_out = math.ceil(data.eval_fraction * rows)  # how datasets' train_test_split sizes the test part
        if rows - held_out < 1:
            raise ConfigError(
                f"dataset.eval_fraction: {data.eval_fraction} of {rows} rows holds out {held_out}, "
                "leaving no training rows"
            )
        parts = train.train_test_split(test_size=data.eval_fraction, seed=config.training.seed)
        train, eval_ds = parts["train"], parts["test"]

    target = "text" if data.format == "text" else "messages"

    def reduce(ds: Any) -> Any:
        ds = ds.select_columns([field])
        if field != target:
            ds = ds.rename_column(field, target)
        return ds

    return reduce(train), (reduce(eval_ds) if eval_ds is not None else None)


def lora_config(config: TrainerConfig) -> Any:
    from peft import LoraConfig

    spec = config.lora
    return LoraConfig(
        r=spec.r,
        lora_alpha=spec.lora_alpha,  # type: ignore[arg-type]  # peft accepts floats
        lora_dropout=spec.lora_dropout,
        target_modules=spec.target_modules,
        bias=spec.bias,
        task_type=spec.task_type,
    )


def sft_config(config: TrainerConfig, output_dir: Path, use_cuda: bool, world_size: int = 1) -> Any:
    from trl import SFTConfig

    t = config.training
    bf16, fp16 = t.bf16, t.fp16
    if not use_cuda and (bf16 or fp16):
        log("mixed_precision_disabled", level="warning", bf16=bf16, fp16=fp16, reason="no CUDA")
        bf16 = fp16 = False
    kwargs: dict[str, Any] = {
        "output_dir": str(output_dir),
        "num_train_epochs": t.num_train_epochs,
        "max_steps": t.max_steps,
        "per_device_train_batch_size": t.per_device_train_batch_size,
        "per_device_eval_batch_size": t.per_device_eval_batch_size,
        "gradient_accumulation_steps": t.gradient_accumulation_steps,
        "learning_rate": t.learning_rate,
        "weight_decay": t.weight_decay,
        "warmup_steps": t.warmup_steps,
        "lr_scheduler_type": t.lr_scheduler_type,
        "max_grad_norm": t.max_grad_norm,
        "max_length": t.max_length,
        "packing": t.packing,
        "bf16": bf16,
        "fp16": fp16,
        # trl turns gradient checkpointing on by default; the spec decides (transformers 5.23's new name).
        "activation_checkpointing": t.gradient_checkpointing,
        "seed": t.seed,
        "data_seed": t.data_seed,
        "logging_strategy": "steps",
        "logging_steps": t.logging_steps,
        "save_strategy": t.save_strategy,
        "save_steps": t.save_steps,
        # HF's rotation runs before on_save, i.e. before our commit: retention is ours (after commit).
        "save_total_limit": None,
        "save_only_model": False,
        "eval_strategy": t.eval_strategy,
        "eval_steps": t.eval_steps,
        "load_best_model_at_end": t.load_best_model_at_end,
        "metric_for_best_model": t.metric_for_best_model,
        "greater_is_better": t.greater_is_better,
        "dataloader_num_workers": t.dataloader_num_workers,
        "report_to": "none",
        "disable_tqdm": True,
        "use_cpu": not use_cuda,
        "include_num_input_tokens_seen": "all",
        "enable_jit_checkpoint": False,
    }
    if config.dataset.format == "text":
        kwargs["dataset_text_field"] = "text"
    if t.gradient_checkpointing:
        kwargs["activation_checkpointing_kwargs"] = {"use_reentrant": False}
    if world_size > 1:
        kwargs["ddp_find_unused_parameters"] = False  # LoRA: frozen base weights are not "unused"
        if not use_cuda:
            kwargs["ddp_backend"] = "gloo"
    try:
        return SFTConfig(**kwargs)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"training: {str(error).splitlines()[0]}") from error
