"""LoRA adapters trained through PEFT and Accelerate, with checkpoints to resume from.

Two ways in, one loop (``train_lora``):

- The transformers backend trains on its own model (``TransformersEngine.train_adapter``,
  ``merge_adapter``): the adapter is added to the model the engine serves, so training,
  perplexity and generation in one process share a single load of the base weights.
- Every other engine that serves adapters (vLLM, an OpenAI-compatible server) cannot train:
  its weights are not PyTorch modules here. ``PeftTrainer`` trains for it: it loads the base
  by path on the step's device for each run, trains or merges, saves the adapter directory and
  releases the model; the engine then serves the directory (a vLLM LoRA request, or an adapter
  registered with the server). ``Engine.train_adapter`` and ``merge_adapter`` fall back to it.

Nothing here knows the engine; callers go through the engine interface. The same loop runs on
this CPU and, under ``accelerate launch`` with an FSDP config, on several GPUs: devices,
gradient sync and saving go through the Accelerator.

Resumption is exact on one device: the batch order of each epoch comes from a
generator seeded by (seed, epoch), and a checkpoint holds the adapter weights,
the optimizer, the step, the loss curve and the torch random state (dropout).
"""

from __future__ import annotations

import copy
import gc
import hashlib
import io
import json
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from persona_platform.resources.files import write_atomic

Example = tuple[list[int], list[bool]]  # token ids, and which of them the loss counts


class TrainingError(RuntimeError):
    pass


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    except KeyError:
        raise ValueError(f"dtype must be auto, float32, bfloat16 or float16, got {dtype!r}") from None


@dataclass(frozen=True)
class LoraTraining:
    rank: int
    alpha: int
    dropout: float
    target_modules: tuple[str, ...]
    learning_rate: float = 1e-3
    epochs: int = 3
    batch_size: int = 4
    max_length: int = 512
    checkpoint_every: int = 20
    seed: int = 0
    quantization: str = "none"  # "4bit": QLoRA on a 4-bit copy of the base (CUDA and bitsandbytes only)

    def lora_config(self):
        from peft import LoraConfig

        return LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=list(self.target_modules),
            task_type="CAUSAL_LM",
        )


@dataclass
class TrainingOutcome:
    adapter_dir: Path
    fingerprint: str
    steps: int
    tokens_trained: int
    seconds: float
    resumed_from_step: int | None
    losses: list[dict] = field(default_factory=list)


def files_fingerprint(directory: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(directory)).encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def run_fingerprint(settings: LoraTraining, examples: Sequence[Example], base_model: str) -> str:
    digest = hashlib.sha256(json.dumps([asdict(settings), base_model]).encode())
    for ids, mask in examples:
        digest.update(json.dumps([ids, mask]).encode())
    return digest.hexdigest()[:16]


def _batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + epoch)).tolist()
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


# The label the loss ignores (PyTorch's cross-entropy ignore_index, which transformers models use).
IGNORED = -100


def loss_labels(ids: Sequence[int], mask: Sequence[bool]) -> list[int]:
    """Training labels: a counted token's own id, ``IGNORED`` for every other token (other speakers,
    headers)."""
    return [token if counted else IGNORED for token, counted in zip(ids, mask, strict=True)]


def _collate(examples: Sequence[Example], pad_id: int, max_length: int):
    rows = [(ids[:max_length], mask[:max_length]) for ids, mask in examples]
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORED, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for r, (ids, mask) in enumerate(rows):
        input_ids[r, : len(ids)] = torch.tensor(ids)
        attention[r, : len(ids)] = 1
        labels[r, : len(ids)] = torch.tensor(loss_labels(ids, mask))
    return input_ids, attention, labels


def prepare_run(name: str, examples: Sequence[Example], settings: LoraTraining) -> None:
    """Refuse a run that could not train anything, before a model is touched; quiet a warning known to be
    harmless."""
    # transformers 5 warns about a renamed attribute that PEFT and Accelerate still read, at every adapter
    # they prepare.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    if settings.quantization not in ("none", "4bit"):
        raise TrainingError(f"quantization must be none or 4bit, got {settings.quantization!r}")
    if not examples:
        raise TrainingError(f"{name}: no training examples")
    counted = sum(sum(mask) for _, mask in examples)
    if counted == 0:
        raise TrainingError(f"{name}: no token of the training examples is the agent's")


def train_lora(
    model,
    internal: str,
    name: str,
    examples: Sequence[Example],
    settings: LoraTraining,
    pad_id: int,
    cpu: bool,
    checkpoint_path: Path,
    adapter_dir: Path,
    log=lambda message: None,
    progress=None,
) -> TrainingOutcome:
    """Train the PEFT adapter ``internal`` of ``model`` (added and active; ``name`` is the public name, for
    messages) on ``examples`` (loss on counted tokens only), resuming from ``checkpoint_path``; save it in
    ``adapter_dir``. ``progress(step, total_steps, numbers)`` is called after every optimizer step."""
    from accelerate import Accelerator
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors.torch import save_file

    accelerator = Accelerator(cpu=cpu)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=settings.learning_rate)
    model, optimizer = accelerator.prepare(model, optimizer)

    steps_per_epoch = -(-len(examples) // settings.batch_size)
    total_steps = settings.epochs * steps_per_epoch
    step, losses, tokens_trained, resumed_from = 0, [], 0, None
    if checkpoint_path.exists():
        state = torch.load(checkpoint_path, weights_only=False)
        set_peft_model_state_dict(accelerator.unwrap_model(model), state["adapter"], adapter_name=internal)
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        step, losses, tokens_trained = state["step"], state["losses"], state["tokens_trained"]
        resumed_from = step
        log(f"{name}: resuming from step {step} of {total_steps}")

    def save_checkpoint() -> None:
        state = {
            "adapter": get_peft_model_state_dict(accelerator.unwrap_model(model), adapter_name=internal),
            "optimizer": optimizer.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "step": step,
            "losses": losses,
            "tokens_trained": tokens_trained,
        }
        if accelerator.is_main_process:
            buffer = io.BytesIO()
            torch.save(state, buffer)
            write_atomic(checkpoint_path, buffer.getvalue())

    started, tokens_before = time.perf_counter(), tokens_trained
    model.train()
    try:
        while step < total_steps:
            epoch, within = divmod(step, steps_per_epoch)
            batch = _batches(len(examples), settings.batch_size, settings.seed, epoch)[within]
            input_ids, attention, labels = _collate([examples[i] for i in batch], pad_id, settings.max_length)
            output = model(
                input_ids=input_ids.to(accelerator.device),
                attention_mask=attention.to(accelerator.device),
                labels=labels.to(accelerator.device),
            )
            accelerator.backward(output.loss)
            optimizer.step()
            optimizer.zero_grad()
            batch_tokens = int((labels != IGNORED).sum())
            tokens_trained += batch_tokens
            step += 1
            losses.append(
                {"step": step, "epoch": epoch, "loss": float(output.loss.detach()), "tokens": batch_tokens}
            )
            if step % settings.checkpoint_every == 0 or step % steps_per_epoch == 0:
                save_checkpoint()
            if progress:
                rate = (tokens_trained - tokens_before) / max(time.perf_counter() - started, 1e-9)
                progress(step, total_steps, {"loss": losses[-1]["loss"], "tokens/s": round(rate, 1)})
    finally:
        model.eval()
    seconds = time.perf_counter() - started

    unwrapped = accelerator.unwrap_model(model)
    adapter_dir.mkdir(parents=True, exist_ok=True)
    weights = {
        k: v.detach().cpu().contiguous()
        for k, v in get_peft_model_state_dict(unwrapped, adapter_name=internal).items()
    }
    save_file(weights, str(adapter_dir / "adapter_model.safetensors"))
    unwrapped.peft_config[internal].save_pretrained(str(adapter_dir))
    return TrainingOutcome(
        adapter_dir, files_fingerprint(adapter_dir), step, tokens_trained, seconds, resumed_from, losses
    )


def quantized_for_training(model_path: str, name: str, settings: LoraTraining):
    """QLoRA: a second copy of the base in 4 bits (NF4, double quantization, bfloat16 compute) with a fresh
    adapter named ``{name}-qlora``; the caller counts it as a model load."""
    if not torch.cuda.is_available():
        raise TrainingError(f"{name}: QLoRA (quantization=4bit) needs a CUDA GPU; none is visible here")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise TrainingError(f"{name}: QLoRA needs bitsandbytes (pip install '.[gpu]')") from exc
    from peft import get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quantized = AutoModelForCausalLM.from_pretrained(
        model_path,
        quantization_config=BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        ),
        device_map={"": torch.cuda.current_device()},
    )
    return get_peft_model(
        prepare_model_for_kbit_training(quantized), settings.lora_config(), adapter_name=f"{name}-qlora"
    )


def merge_lora(
    model, internal: str, tokenizer, out_dir: Path, check_inputs: Sequence[list[int]], device: str
) -> tuple[str, list[float]]:
    """Save ``model`` (a PEFT model, adapter ``internal`` active) with that adapter merged into plain
    weights, with the tokenizer; return (fingerprint, max |logit diff| per check input) between the merged
    copy and ``model``.

    The merge works on a copy, so ``model`` keeps serving the base and every adapter unmerged.
    """
    merged = copy.deepcopy(model).merge_and_unload(adapter_names=[internal])
    merged.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(out_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(out_dir))
    differences = []
    with torch.inference_mode():
        for ids in check_inputs:
            tensor = torch.tensor([ids], device=device)
            unmerged = model(input_ids=tensor).logits.float()
            direct = merged(input_ids=tensor).logits.float()
            differences.append(float((unmerged - direct).abs().max()))
    return files_fingerprint(out_dir), differences


def merge_own_copy(
    model, internal: str, tokenizer, out_dir: Path, check_inputs: Sequence[list[int]], device: str
) -> tuple[str, list[float]]:
    """``merge_lora`` for a model no one else serves (a trainer's own load): the logits of base + adapter
    are taken first, then the adapter is merged in place, so the base is held once rather than copied."""
    model.set_adapter(internal)
    model.eval()
    with torch.inference_mode():
        unmerged = [
            model(input_ids=torch.tensor([ids], device=device)).logits.float().cpu() for ids in check_inputs
        ]
    merged = model.merge_and_unload(adapter_names=[internal])
    merged.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(out_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(out_dir))
    differences = []
    with torch.inference_mode():
        for ids, reference in zip(check_inputs, unmerged, strict=True):
            direct = merged(input_ids=torch.tensor([ids], device=device)).logits.float().cpu()
            differences.append(float((reference - direct).abs().max()))
    return files_fingerprint(out_dir), differences


def release(device: str) -> None:
    """Give a dropped model's memory back (the caller has deleted its references)."""
    gc.collect()
    if device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.empty_cache()
