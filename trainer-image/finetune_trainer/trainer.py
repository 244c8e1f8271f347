"""SFTTrainer with lean checkpoints and save timing; the commit itself happens in CheckpointCommitCallback.

Saves go through trl's and transformers' own `_save_checkpoint` (super()), so what SFTTrainer adds there
runs. In trl 1.16 that is a model card: `SFTTrainer._save_checkpoint` calls `create_model_card`, which
rewrites DIR/README.md at every save; neither trl nor transformers has a setting for it (transformers calls
its own only from push_to_hub), so `create_model_card` is overridden here and writes only when the Trainer
is built with `model_card=True`. peft's `PeftModel.save_pretrained` writes a README.md card too, always, on
the main process: a checkpoint's adapter files are instead written by `write_adapters` (the same writer as
the background saves), which writes what resume reads and nothing else; final/ keeps peft's card.

Also: restoring a checkpoint either works or raises `RestoreFailed` naming what could not be read (so the CLI
can fall back to an older checkpoint), and a run resumed at its last step trains no further step.

Over 400 lines on purpose: every method of CommitTrainer overrides a Trainer hook (save, snapshot, restore)
and works on the Trainer's own state, so they stay on the one subclass; most of the length is the background
snapshot, which copies exactly what HF's save writes.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers.trainer_callback import PrinterCallback
from trl import SFTTrainer

from finetune_trainer import checkpoints as ckpt
from finetune_trainer import dist, volume
from finetune_trainer.callbacks import StartupCallback
from finetune_trainer.faults import Faults
from finetune_trainer.logs import log, startup
from finetune_trainer.run_state import RunState
from finetune_trainer.step_boundary import StepBoundary, capture_rng


@contextlib.contextmanager
def restoring(what: str) -> Iterator[None]:
    """Turn a failure to read back `what` into RestoreFailed; running out of memory is not damage."""
    import torch

    try:
        yield
    except (MemoryError, torch.OutOfMemoryError):
        raise
    except ckpt.RestoreFailed:
        raise
    except Exception as error:
        raise ckpt.RestoreFailed(f"{what}: cannot be restored ({volume.first_line(error)})") from error


def probe_restore(path: Path, world_size: int) -> None:
    """Deserialise every file resume reads, the way the Trainer reads it, before anything is built.

    Catches a file that matches its marker but cannot be read back (a version-1 marker has no checksums;
    a writer bug) in a second, instead of after the model is loaded or after training has begun.
    Every rank checks every rank's RNG file, so all ranks reach the same verdict.
    """
    import safetensors.torch
    import torch
    from transformers import TrainerState
    from transformers.trainer_pt_utils import safe_globals

    loads: list[tuple[str, Callable[[Path], Any]]] = [
        (ckpt.TRAINER_STATE, lambda f: TrainerState.load_from_json(str(f))),
        (ckpt.ADAPTER_CONFIG, lambda f: json.loads(f.read_text())),
        (ckpt.ADAPTER_WEIGHTS, lambda f: safetensors.torch.load_file(str(f), device="cpu")),
        (ckpt.OPTIMIZER, lambda f: torch.load(f, map_location="cpu", weights_only=True)),
        (ckpt.SCHEDULER, lambda f: torch.load(f, map_location="cpu", weights_only=True)),
    ]
    for rng in ckpt.rng_files(world_size):

        def load_rng(f: Path) -> Any:
            with safe_globals():
                return torch.load(f, weights_only=True)

        loads.append((rng, load_rng))
    for name, load in loads:
        with restoring(name):
            load(path / name)


class CommitTrainer(SFTTrainer):
    def __init__(self, *args: Any, run: RunState, faults: Faults, model_card: bool = False, **kwargs: Any):
        self._run_state = run
        self._model_card = model_card  # trl's README.md card in the output directory (create_model_card)
        self._faults = faults
        self._in_checkpoint = False
        self._embedding_decision: bool | None = None
        self._unwrapped: Any = None
        self._adapter_parameters: dict[str, dict[str, Any]] = {}  # adapter -> {saved name: parameter}
        model = kwargs.get("model")
        self._loaded_vocab_size = getattr(getattr(model, "config", None), "vocab_size", None)
        super().__init__(*args, **kwargs)
        self.remove_callback(PrinterCallback)  # prints python dicts to stdout; our logs are JSON lines
        self.add_callback(StartupCallback())
        # Snapshots where each optimizer step begins, for a save in the middle of one (step_boundary.py).
        self._step_boundary = StepBoundary(self)
        self.add_callback(self._step_boundary)
        startup.mark("trainer_build")

    def _prepare_dataset(self, *args: Any, **kwargs: Any) -> Any:
        startup.mark("trainer_build")  # what SFTTrainer.__init__ did before it tokenizes
        try:
            return super()._prepare_dataset(*args, **kwargs)
        finally:
            startup.mark("tokenization")

    def train(self, *args: Any, **kwargs: Any) -> Any:
        startup.mark("trainer_build")  # the CLI's work between building the trainer and training
        return super().train(*args, **kwargs)

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        run = self._run_state
        run.wait_for_save()  # the previous background save is committed before anything of this one
        run.save_started_at = time.monotonic()
        target = os.path.join(self._get_output_dir(trial=trial), f"checkpoint-{self.state.global_step}")
        # Before anything of this save touches DIR (a leftover's removal, retention, the files): every rank.
        run.check_fence(f"writing {Path(target).name}", agree=dist.any_rank)
        if self.args.should_save and os.path.isdir(target):
            # Leftover of an earlier attempt (torn, or committed but skipped as damaged): its marker must
            # never describe files of this write. Resume chose an older checkpoint: this one is unused.
            ckpt.remove_checkpoint(Path(target))
        needed = volume.estimate_checkpoint_bytes(run.last_commit, self.model)
        if run.is_main and needed:
            keep = [self.state.best_model_checkpoint] if self.state.best_model_checkpoint else []
            freed = volume.make_room(run.output_dir, run.save_total_limit, needed, keep)
            if freed:
                log(
                    "retention_before_save",
                    step=self.state.global_step,
                    deleted=[p.name for p in freed],
                    needed_bytes=needed,
                    free_bytes=volume.free_bytes(run.output_dir),
                    reason="free space short of the last checkpoint's size",
                )
        free_before = volume.free_bytes(run.output_dir) if run.is_main else 0

        def out_of_space(error: BaseException) -> volume.VolumeFull | None:
            if run.is_main and volume.is_out_of_space(error, run.output_dir, needed):
                ckpt.remove_checkpoint(Path(target))  # never committed: its partial files only take space
                return volume.VolumeFull(
                    Path(target).name, run.output_dir, free_before, needed, volume.first_line(error)
                )
            return None

        if run.saver is not None and self._can_snapshot():
            run.pending_write = self._snapshot_checkpoint(target, out_of_space)  # CheckpointCommitCallback
            return
        self._in_checkpoint = True
        try:
            super()._save_checkpoint(model, trial)  # SFTTrainer's (its card: create_model_card), then HF's
        except Exception as error:
            full = out_of_space(error)
            if full is not None:
                raise full from error
            raise
        finally:
            self._in_checkpoint = False

    # --- background saves: copy the state at the step boundary, write it in the saver's thread ---------

    def _can_snapshot(self) -> bool:
        """What _snapshot_checkpoint writes is what HF writes for one process, a PeftModel and no
        DeepSpeed/FSDP; anything else is saved synchronously by HF's own code."""
        from peft import PeftModel

        unwrapped = self._unwrapped_model()
        return (
            self.args.world_size <= 1
            and isinstance(unwrapped, PeftModel)
            and not self.is_deepspeed_enabled
            and not self.is_fsdp_enabled
            and not self.args.save_only_model
        )

    def _unwrapped_model(self) -> Any:
        """The model under the accelerator's wrappers, looked up once (accelerate walks the wrappers: ≈ 5 ms
        a call, twice a save); it is fixed once training runs, which is when saves happen."""
        if self._unwrapped is None:
            self._unwrapped = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        return self._unwrapped

    def _capture_rng_state(self) -> dict[str, Any]:
        """The RNG states a checkpoint stores (what HF's _save_rng_state saves): the one place both save paths
        (synchronous and background) take them from. Normally captured now; after a SIGTERM stop in the middle
        of an optimizer step, those of the step boundary (the micro-batches since moved them; resume reloads
        the boundary's: step_boundary.py)."""
        import torch

        boundary = self._step_boundary.rng if self._run_state.stopped_mid_step else None
        rng = boundary or capture_rng()
        states: dict[str, Any] = {"python": rng.python, "numpy": rng.numpy, "cpu": rng.cpu}
        if rng.cuda is not None:  # every device's state: the whole list with several ranks, as HF
            states["cuda"] = rng.cuda if self.args.world_size > 1 else rng.cuda[torch.cuda.current_device()]
        return states

    def _save_rng_state(self, output_dir: str) -> None:
        import torch

        os.makedirs(output_dir, exist_ok=True)  # another rank may get here before rank 0 created it
        rank = self.args.process_index if self.args.world_size > 1 else 0
        name = ckpt.rng_files(self.args.world_size)[rank]
        torch.save(self._capture_rng_state(), os.path.join(output_dir, name))

    def _snapshot_checkpoint(
        self, target: str, out_of_space: Callable[[BaseException], volume.VolumeFull | None]
    ) -> Callable[[], None]:
        """Copy everything checkpoint-N holds (adapter weights and optimizer state cloned to CPU, scheduler,
        RNG, trainer state) now, at the step boundary; return the function that writes it, in the formats
        and file names HF writes (resume, probe_restore and the commit marker are unchanged)."""
        import copy
        import dataclasses

        import torch
        from transformers.trainer_callback import ExportableState

        self.store_flos()
        best_step = self.state.best_global_step
        if best_step:  # as HF (after writing the model): the best checkpoint once it exists, this one too
            best = os.path.join(os.path.dirname(target), f"checkpoint-{best_step}")
            if best_step == self.state.global_step or os.path.exists(best):
                self.state.best_model_checkpoint = best
        adapters = self._adapter_files(target)
        trainer: Any = self  # optimizer and scheduler exist once training runs
        optimizer = _cpu_copy(trainer.optimizer.state_dict())
        scheduler = copy.deepcopy(trainer.lr_scheduler.state_dict())
        scaler = getattr(self.accelerator, "scaler", None)
        scaler_state = _cpu_copy(scaler.state_dict()) if scaler is not None else None
        rng = self._capture_rng_state()
        for callback in [*self.callback_handler.callbacks, self.control]:
            if isinstance(callback, ExportableState):  # as HF's _save_checkpoint
                name = callback.__class__.__name__
                exported: Any = self.state.stateful_callbacks
                if isinstance(exported[name], list):
                    exported[name].append(callback.state())
                else:
                    exported[name] = callback.state()
        # Rendered in the thread: the log history only grows (its entries are never changed), so a copy of
        # the list and of the small fields is the state as of now.
        state = copy.copy(self.state)
        state.log_history = list(self.state.log_history)
        state.stateful_callbacks = copy.deepcopy(self.state.stateful_callbacks)
        args, faults, step = self.args, self._faults, self.state.global_step

        def write() -> None:
            try:
                os.makedirs(target, exist_ok=True)
                write_adapters(adapters)
                torch.save(args, os.path.join(target, ckpt.TRAINING_ARGS))
                torch.save(optimizer, os.path.join(target, ckpt.OPTIMIZER))
                torch.save(scheduler, os.path.join(target, ckpt.SCHEDULER))
                if scaler_state is not None:
                    torch.save(scaler_state, os.path.join(target, "scaler.pt"))
                faults.in_save(step)  # test hook: a SIGKILL here leaves a torn checkpoint
                torch.save(rng, os.path.join(target, ckpt.rng_files(1)[0]))
                text = json.dumps(dataclasses.asdict(state), indent=2, sort_keys=True) + "\n"
                with open(os.path.join(target, ckpt.TRAINER_STATE), "w", encoding="utf-8") as fh:
                    fh.write(text)
            except Exception as error:
                full = out_of_space(error)
                if full is not None:
                    raise full from error
                raise

        return write

    def _adapter_files(self, target: str, state_dict: dict | None = None) -> list[AdapterFiles]:
        """What peft's save_pretrained writes for each adapter of the model, copied now (weights cloned to the
        CPU): the weights under peft's names, and the config as peft saves it (inference mode, the base
        model's name, the auto mapping when there is no task type)."""
        import copy

        from peft.utils import get_peft_model_state_dict

        unwrapped = self._unwrapped_model()
        adapters = []
        for name, peft_config in unwrapped.peft_config.items():
            if state_dict is None:
                weights = self._adapter_tensors(unwrapped, name)
            else:  # given by HF (a sharded model gathered for the save): peft's names picked from it
                weights = get_peft_model_state_dict(
                    unwrapped,
                    state_dict=state_dict,
                    adapter_name=name,
                    save_embedding_layers=self._save_embedding_layers(),
                )
            config = copy.deepcopy(peft_config)
            if config.base_model_name_or_path is None:
                base_name = unwrapped.base_model.model.__dict__.get("name_or_path")
                config.base_model_name_or_path = base_name or None
            config.inference_mode = True
            mapping = None
            if config.task_type is None:
                base = unwrapped._get_base_model_class(is_prompt_tuning=config.is_prompt_learning)
                mapping = {"base_model_class": base.__name__, "parent_library": base.__module__}
            subdir = target if name == "default" else os.path.join(target, name)
            adapters.append(AdapterFiles(subdir, _cpu_copy(weights), config, mapping))
        return adapters

    def _adapter_tensors(self, unwrapped: Any, name: str) -> dict[str, Any]:
        """peft's adapter state dict (the names it saves under). Building it walks every module (≈20 ms a save
        on a 6-layer model, most of the copy's time); its tensors are the adapter's parameters themselves, so
        the names are matched to the parameters once and read from them at every save."""
        from peft.utils import get_peft_model_state_dict

        cached = self._adapter_parameters.get(name)
        if cached is not None:
            return cached
        views = get_peft_model_state_dict(
            unwrapped, adapter_name=name, save_embedding_layers=self._save_embedding_layers()
        )
        by_storage = {(p.data_ptr(), tuple(p.shape)): p for p in unwrapped.parameters()}
        found = {k: by_storage.get((v.data_ptr(), tuple(v.shape))) for k, v in views.items()}
        if all(p is not None for p in found.values()):
            self._adapter_parameters[name] = found
        return views  # something that is not a parameter (a buffer): built again at every save

    def _save_embedding_layers(self) -> bool:
        """peft's default ("auto") decides on every save, and for a hub model asks the hub for the base
        model's config.json (a HEAD per save, then a config load) only to learn whether the vocabulary was
        resized. Decide without the network: saved when targeted by LoRA (as peft) or resized since load."""
        if self._embedding_decision is None:
            from peft.tuners.tuners_utils import INCLUDE_LINEAR_LAYERS_SHORTHAND
            from peft.utils.other import EMBEDDING_LAYER_NAMES
            from peft.utils.save_and_load import match_target_against_key

            unwrapped = self._unwrapped_model()
            targeted = False
            for config in unwrapped.peft_config.values():  # peft's own test (get_peft_model_state_dict)
                targets = getattr(config, "target_modules", None)
                if getattr(config, "trainable_token_indices", None) is not None:
                    continue
                if isinstance(targets, str) and targets != INCLUDE_LINEAR_LAYERS_SHORTHAND:
                    targeted |= any(
                        match_target_against_key(targets, k)
                        for k, _ in unwrapped.get_base_model().named_modules()
                        if any(re.match(rf"(.*\.)?{e}$", k) for e in EMBEDDING_LAYER_NAMES)
                    )
                elif targets:
                    targeted |= any(k in targets for k in EMBEDDING_LAYER_NAMES)
            vocab = getattr(getattr(unwrapped, "config", None), "vocab_size", None)
            resized = self._loaded_vocab_size is not None and vocab != self._loaded_vocab_size
            self._embedding_decision = targeted or resized
        return self._embedding_decision

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """HF's _save for a PeftModel, with the embedding-layer decision made once (no hub request per save);
        in a checkpoint lean: no tokenizer files and no README model card (they were 56% of a tiny one)."""
        from peft import PeftModel

        unwrapped = self._unwrapped_model()
        if not self.args.should_save or not isinstance(unwrapped, PeftModel):
            super()._save(output_dir, state_dict)
            return
        import torch

        output_dir = str(output_dir if output_dir is not None else self.args.output_dir)
        os.makedirs(output_dir, exist_ok=True)
        lean = self._in_checkpoint
        if lean:  # the adapter files resume reads, written as a background save writes them
            write_adapters(self._adapter_files(output_dir, state_dict))
        else:  # final/: peft's own save, its README.md card included
            unwrapped.save_pretrained(
                output_dir,
                state_dict=state_dict,
                is_main_process=True,
                save_embedding_layers=self._save_embedding_layers(),
            )
            tokenizer = self.processing_class
            if tokenizer is None:
                tokenizer = getattr(self.data_collator, "tokenizer", None)
            if tokenizer is not None:
                tokenizer.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, ckpt.TRAINING_ARGS))

    def create_model_card(self, *args: Any, **kwargs: Any) -> None:
        """Called by SFTTrainer._save_checkpoint at every save (DIR/README.md): only with model_card=True."""
        if self._model_card:
            super().create_model_card(*args, **kwargs)

    # --- a save in the middle of an optimizer step (SIGTERM at a micro-batch): step N's state -----------

    def _maybe_log_save_evaluate(self, *args: Any, **kwargs: Any) -> None:
        if self._run_state.stopped_mid_step:
            self._step_boundary.rewind_counters()  # before the loss is logged and trainer_state written
        super()._maybe_log_save_evaluate(*args, **kwargs)

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        super()._save_optimizer_and_scheduler(output_dir)
        self._faults.in_save(self.state.global_step)  # test hook: a SIGKILL here leaves a torn checkpoint

    def _load_best_model(self) -> None:
        self._run_state.wait_for_save()  # load_best_model_at_end: the best may be the save still in flight
        super()._load_best_model()

    # --- restore: every read of a checkpoint either works or raises RestoreFailed ------------------------

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        with restoring("adapter (adapter_model.safetensors, adapter_config.json)"):
            super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        with restoring("optimizer.pt / scheduler.pt"):
            super()._load_optimizer_and_scheduler(checkpoint)

    def _load_rng_state(self, checkpoint: str | None) -> None:
        with restoring("RNG state"):
            super()._load_rng_state(checkpoint)
        self._step_boundary.rng_restored()

    def _run_epoch(self, *args: Any, **kwargs: Any) -> None:
        # Resumed from the checkpoint of the last step (killed after it was committed, before final/ was
        # written): transformers' loop would run one more optimizer step before it checks max_steps (it
        # does when the last step is mid-epoch). There is nothing left to train: go straight to the end.
        if self.state.global_step >= self.state.max_steps:
            if not self.control.should_training_stop:
                log("resume_at_last_step", step=self.state.global_step, max_steps=self.state.max_steps)
            self.control.should_training_stop = True
            return
        super()._run_epoch(*args, **kwargs)


@dataclass
class AdapterFiles:
    """One adapter's files in a checkpoint: where, its weights (CPU copies), its config and auto mapping."""

    directory: str
    weights: dict[str, Any]
    config: Any  # peft's PeftConfig, ready to save
    auto_mapping: dict[str, str] | None


def write_adapters(adapters: list[AdapterFiles]) -> None:
    """adapter_model.safetensors and adapter_config.json of each adapter, in the formats peft writes."""
    import safetensors.torch

    for adapter in adapters:
        os.makedirs(adapter.directory, exist_ok=True)
        path = os.path.join(adapter.directory, ckpt.ADAPTER_WEIGHTS)
        weights = {name: tensor.contiguous() for name, tensor in adapter.weights.items()}  # as peft
        safetensors.torch.save_file(weights, path, metadata={"format": "pt"})
        adapter.config.save_pretrained(adapter.directory, auto_mapping_dict=adapter.auto_mapping)


def _cpu_copy(value: Any) -> Any:
    """A deep copy with every tensor cloned to the CPU: training may change the originals from now on."""
    import copy

    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        out = copy.copy(value)  # keeps the dict's type (OrderedDict, defaultdict)
        for key, item in value.items():
            out[key] = _cpu_copy(item)
        return out
    if type(value) in (list, tuple):
        return type(value)(_cpu_copy(v) for v in value)
    return copy.deepcopy(value)
