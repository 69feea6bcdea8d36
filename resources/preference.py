"""Preference tuning (DPO) of a LoRA adapter through TRL's ``DPOTrainer``, on the model an engine serves.

The policy is a fresh adapter of the engine's PEFT model; the reference is that same model with every adapter
disabled (the base), so training holds no second copy of the weights and loads nothing. Checkpoints are the
Trainer's (``checkpoint-<step>`` folders, the adapter alone in PEFT's format with the optimizer, scheduler and
random state), so a killed run resumes from the latest one, on the same batches.

TRL is imported only when a run starts: it is slow to import, and the code location imports this module for
``PreferencePair`` alone.
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from persona_platform.resources.training import (
    LoraTraining,
    TrainingError,
    TrainingOutcome,
    files_fingerprint,
)

ADAPTER_WEIGHTS = "adapter_model.safetensors"


@dataclass(frozen=True)
class PreferencePair:
    """A text prompt for a base model (no chat template) and two continuations of it, the preferred first."""

    prompt: str
    chosen: str
    rejected: str


def prepare_dpo(name: str, pairs: Sequence[PreferencePair], settings: LoraTraining) -> None:
    """Refuse a run that could not train here, before an adapter is added; quiet a warning known to be
    harmless."""
    if not pairs:
        raise TrainingError(f"{name}: no preference pairs to train on")
    if settings.quantization == "4bit":
        raise TrainingError(f"{name}: DPO trains the served model itself; quantization=4bit is not supported")
    if settings.processes > 1:
        raise TrainingError(f"{name}: DPO trains in one process; set processes=1")
    # transformers 5 warns about a renamed attribute that PEFT and Accelerate still read, at every adapter.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


def train_dpo(
    model,
    internal: str,
    tokenizer,
    pairs: Sequence[PreferencePair],
    settings: LoraTraining,
    beta: float,
    checkpoint_dir: Path,
    adapter_dir: Path,
    cpu: bool,
    log: Callable[[str], None] = lambda message: None,
    progress: Callable[[int, int, dict], None] | None = None,
) -> TrainingOutcome:
    """Train the adapter ``internal`` of the PEFT model ``model`` (added, active and freshly initialised) with
    DPO on ``pairs`` against the base model, resuming from the latest checkpoint in ``checkpoint_dir``; save
    the adapter alone in ``adapter_dir``. ``progress(step, total_steps, {"loss": ...})`` after every step."""
    prepare_dpo(internal, pairs, settings)
    import datasets
    from transformers import PrinterCallback, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    datasets.disable_progress_bars()  # one bar per preprocessing pass, in every step's log otherwise

    class AdapterDPOTrainer(DPOTrainer):
        """Checkpoints hold the adapter ``internal`` alone, in the checkpoint folder itself. (The Trainer
        would save every adapter of the model, each in a folder of its name, and resume only one named
        "default".)"""

        def _save(self, output_dir=None, state_dict=None):
            save_adapter(self.model, internal, Path(output_dir or self.args.output_dir))

        def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
            load_adapter(self.model, internal, Path(resume_from_checkpoint))

        def _send_telemetry(self):
            pass  # TRL 1.16 reports every trainer it builds to the Hub; a pipeline step calls no one

    class Progress(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            # With logging_steps=1 every step logs its loss; the summary at the end has none.
            if progress is not None and logs and "loss" in logs:
                progress(state.global_step, state.max_steps, {"loss": logs["loss"]})

    args = DPOConfig(
        output_dir=str(checkpoint_dir),
        per_device_train_batch_size=settings.batch_size,
        num_train_epochs=settings.epochs,
        learning_rate=settings.learning_rate,
        lr_scheduler_type="constant",  # one learning rate throughout, as the SFT loop trains
        seed=settings.seed,
        max_length=settings.max_length,
        beta=beta,
        logging_steps=1,
        save_steps=settings.checkpoint_every,
        save_total_limit=2,  # a run killed while writing the newest resumes from the one before
        use_cpu=cpu,
        # Mixed precision would make Accelerate wrap the served model's forward in autocast for good.
        bf16=False,
        # TRL turns it on by default, which leaves a hook on the served model's input embeddings.
        activation_checkpointing=False,
        # TRL zeroes every dropout of the model by default (the other adapters' too); the adapter's own
        # dropout is a setting here.
        disable_dropout=False,
        report_to="none",
        disable_tqdm=True,
        dataloader_pin_memory=not cpu,
    )
    resume = latest_checkpoint(checkpoint_dir)
    resumed_from = int(resume.name.removeprefix("checkpoint-")) if resume else None
    base = model.get_base_model()
    own_forward = vars(base).get("forward")
    trainer = AdapterDPOTrainer(
        model=model,
        # TRL 1.16, given a PEFT model and no reference, copies an adapter it expects to be named "default"
        # into one named "ref" and uses that as the reference. A stand-in passed here skips that; with no
        # reference model set afterwards, TRL disables every adapter for the reference pass: the base.
        ref_model=_StandIn(model.config),
        args=args,
        train_dataset=datasets.Dataset.from_list([asdict(p) for p in pairs]),
        processing_class=tokenizer,
        callbacks=[Progress()],
    )
    trainer.ref_model = None
    trainer.remove_callback(PrinterCallback)  # it prints every log dict to stdout
    log(
        f"{internal}: DPO on {len(pairs)} pairs, beta {beta}, {settings.epochs} epochs"
        + (f", resuming from step {resumed_from}" if resumed_from is not None else "")
    )
    started = time.perf_counter()
    try:
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    finally:
        model.eval()
        # TRL patches the base model's forward with a fused LM head; the engine serves this model.
        if own_forward is None:
            vars(base).pop("forward", None)
        else:
            base.forward = own_forward
    seconds = time.perf_counter() - started
    losses = [
        {"step": e["step"], "epoch": e["epoch"], "loss": e["loss"], "margin": e.get("rewards/margins")}
        for e in trainer.state.log_history
        if "loss" in e
    ]
    save_adapter(model, internal, adapter_dir)
    steps = trainer.state.global_step
    final = f", final loss {losses[-1]['loss']:.4f}" if losses else ""
    log(f"{internal}: {steps} steps in {seconds:.1f}s{final}; adapter saved in {adapter_dir}")
    return TrainingOutcome(
        adapter_dir,
        files_fingerprint(adapter_dir),
        steps,
        0,  # tokens_trained counts SFT targets; DPO has none
        seconds,
        resumed_from,
        losses,
        model_loads=0,
    )


class _StandIn(torch.nn.Module):
    """What DPOTrainer reads of a reference model while it is built (its config), and nothing else."""

    def __init__(self, config):
        super().__init__()
        self.config = config


def latest_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The latest complete checkpoint: the Trainer writes trainer_state.json last."""
    done = [p.parent for p in checkpoint_dir.glob("checkpoint-*/trainer_state.json")]
    return max(done, key=lambda p: int(p.name.removeprefix("checkpoint-")), default=None)


def save_adapter(model, internal: str, directory: Path) -> None:
    """The adapter ``internal`` alone, as PEFT saves one (``PeftModel.from_pretrained`` loads it)."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    weights = get_peft_model_state_dict(model, adapter_name=internal)
    tensors = {k: v.detach().cpu().contiguous() for k, v in weights.items()}
    save_file(tensors, str(directory / ADAPTER_WEIGHTS))
    # PEFT records the base in the first adapter of a model only (get_peft_model), not in one added later: it
    # is recorded in every one, so that a run's files do not depend on what the engine had loaded before.
    config = copy.copy(model.peft_config[internal])
    config.base_model_name_or_path = model.get_base_model().name_or_path
    config.save_pretrained(str(directory))


def load_adapter(model, internal: str, directory: Path) -> None:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(str(directory / ADAPTER_WEIGHTS)), adapter_name=internal)
