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

Nothing here knows the engine; callers go through the engine interface. With ``processes = 1`` (the
default) the loop runs inside the caller's process, on the model it was given. With ``processes > 1`` the
engine hands the run to ``resources.launcher``, which starts that many processes under torchrun (gloo on CPU,
NCCL on GPUs), each loading the base once and running this same loop as one rank:

- every global batch of ``batch_size`` examples (the same order in every process: a generator seeded by
  (seed, epoch)) is split into disjoint shards, ``batch[rank::processes]`` (``rank_shard``);
- the loss is one objective whatever the number of processes: the summed negative log-likelihood of a rank's
  counted tokens over the counted tokens of the whole global batch, times the number of processes, so that
  the mean of the ranks' gradients (what DDP and FSDP compute) is the gradient of the global batch's
  token-weighted mean loss (a plain mean of per-rank means would weight a token by its shard's size);
- strategy ``ddp``: the model is wrapped by the Accelerator (DistributedDataParallel: LoRA gradients
  all-reduced); ``fsdp``: every decoder layer and the root are sharded with torch's ``fully_shard`` (FSDP2),
  the frozen base included, so a base too large for one device is held once across them;
- rank 0 writes checkpoints and the final adapter; every rank resumes from the same checkpoint.

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
    # Training processes (one per GPU; on CPU, gloo): 1 trains in the caller's process on its model.
    processes: int = 1
    # With processes > 1: "ddp" (each process holds the whole base) or "fsdp" (the base sharded across them).
    strategy: str = "ddp"

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
    # Loads of the base this training made (0: it trained the engine's own loaded model).
    model_loads: int = 1
    # Per process (rank): {"rank", "examples": [[example indices it trained on] per epoch], "tokens"}.
    shards: list[dict] = field(default_factory=list)


def files_fingerprint(directory: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(directory)).encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def run_fingerprint(settings: LoraTraining, examples: Sequence[Example], base_model: str) -> str:
    fields = asdict(settings)
    if settings.processes == 1:
        # How the run is launched counts only where it changes the arithmetic, so a one-process run keeps the
        # fingerprint (and the checkpoints and adapters) it had before processes existed.
        del fields["processes"], fields["strategy"]
    digest = hashlib.sha256(json.dumps([fields, base_model]).encode())
    for ids, mask in examples:
        digest.update(json.dumps([ids, mask]).encode())
    return digest.hexdigest()[:16]


def _batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + epoch)).tolist()
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def rank_shard(batch: Sequence[int], rank: int, processes: int) -> list[int]:
    """The examples of a global batch that process ``rank`` of ``processes`` trains on: every
    ``processes``-th from its rank, so the shards are disjoint, cover the batch and differ in size by at most
    one (the last batch of an epoch may leave a rank none)."""
    return list(batch[rank::processes])


STRATEGIES = ("ddp", "fsdp")

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
    processes = settings.processes
    if not isinstance(processes, int) or isinstance(processes, bool) or processes < 1:
        raise TrainingError(f"{name}: processes must be a whole number >= 1, got {processes!r}")
    if settings.strategy not in STRATEGIES:
        raise TrainingError(
            f"{name}: strategy must be one of {', '.join(STRATEGIES)}, got {settings.strategy!r}"
        )
    if settings.strategy == "fsdp" and processes == 1:
        raise TrainingError(f"{name}: strategy fsdp shards the base across processes; it needs processes > 1")
    if settings.quantization == "4bit" and processes > 1:
        raise TrainingError(f"{name}: QLoRA (quantization=4bit) trains in one process; set processes=1")
    if settings.batch_size < processes:
        raise TrainingError(
            f"{name}: batch_size {settings.batch_size} is smaller than processes {processes}: each process "
            "trains on its share of every batch, so a batch needs at least one example per process"
        )
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
    ``adapter_dir``. ``progress(step, total_steps, numbers)`` is called after every optimizer step.

    Under torchrun (``resources.launcher``) this is one rank of a distributed run: it trains on its shard of
    every batch, and only rank 0 writes files and reports progress."""
    from accelerate import Accelerator
    from safetensors.torch import save_file

    accelerator = Accelerator(cpu=cpu)
    world, rank = accelerator.num_processes, accelerator.process_index
    fsdp = settings.strategy == "fsdp" and world > 1
    main = accelerator.is_main_process

    steps_per_epoch = -(-len(examples) // settings.batch_size)
    total_steps = settings.epochs * steps_per_epoch
    step, losses, tokens_trained, resumed_from = 0, [], 0, None
    state = torch.load(checkpoint_path, weights_only=False) if checkpoint_path.exists() else None
    if state is not None:
        if state.get("layout", "plain") != ("fsdp" if fsdp else "plain"):
            raise TrainingError(f"{name}: checkpoint {checkpoint_path} was written by another strategy")
        _set_adapter_state(model, state["adapter"], internal)  # before wrapping: every rank the same
    if fsdp:
        _shard(model, accelerator.device)
        held = sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in model.parameters())
        whole = sum(p.numel() for p in model.parameters())
        log(f"{name}: rank {rank} holds {held:,} of the model's {whole:,} parameters (fsdp)")
        optimizer = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad], lr=settings.learning_rate
        )
    else:
        optimizer = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad], lr=settings.learning_rate
        )
        model, optimizer = accelerator.prepare(model, optimizer)
    if state is not None:
        _set_optimizer_state(model, optimizer, state["optimizer"], fsdp)
        torch.set_rng_state(state["torch_rng"])
        step, losses, tokens_trained = state["step"], state["losses"], state["tokens_trained"]
        resumed_from = step
        log(f"{name}: resuming from step {step} of {total_steps}")
    if world > 1:
        log(f"{name}: rank {rank} of {world} ({'fsdp' if fsdp else 'ddp'}) on {accelerator.device}")

    def save_checkpoint() -> None:
        # Collective under FSDP (every rank gathers its shards); rank 0 writes.
        state = {
            "adapter": _adapter_state(model, internal, accelerator, fsdp),
            "optimizer": _optimizer_state(model, optimizer, fsdp),
            "torch_rng": torch.get_rng_state(),
            "step": step,
            "losses": losses,
            "tokens_trained": tokens_trained,
        }
        if fsdp:
            state["layout"] = "fsdp"
        if main:
            buffer = io.BytesIO()
            torch.save(state, buffer)
            write_atomic(checkpoint_path, buffer.getvalue())

    seen: dict[int, list[int]] = {}
    shard_tokens = 0
    started, tokens_before = time.perf_counter(), tokens_trained
    model.train()
    try:
        while step < total_steps:
            epoch, within = divmod(step, steps_per_epoch)
            batch = _batches(len(examples), settings.batch_size, settings.seed, epoch)[within]
            mine = rank_shard(batch, rank, world)
            seen.setdefault(epoch, []).extend(mine)
            # Every rank knows the whole batch, so the normaliser needs no communication.
            targets = sum(_targets(examples[i], settings.max_length) for i in batch)
            loss, part = _shard_loss(
                model, [examples[i] for i in mine or batch[:1]], pad_id, settings.max_length, accelerator
            )
            # mean over ranks of (world * sum_r / T) = (sum over the batch) / T: the global token mean.
            scale = (world / max(targets, 1)) if mine else 0.0  # a rank left without examples adds nothing
            accelerator.backward(loss * scale)
            optimizer.step()
            optimizer.zero_grad()
            step_loss = (
                float(accelerator.reduce(part * (scale / world), "sum")) if world > 1 else float(part * scale)
            )
            batch_tokens = sum(_counted(examples[i], settings.max_length) for i in batch)
            shard_tokens += sum(_counted(examples[i], settings.max_length) for i in mine)
            tokens_trained += batch_tokens
            step += 1
            losses.append({"step": step, "epoch": epoch, "loss": step_loss, "tokens": batch_tokens})
            if step % settings.checkpoint_every == 0 or step % steps_per_epoch == 0:
                save_checkpoint()
            if progress and main:
                rate = (tokens_trained - tokens_before) / max(time.perf_counter() - started, 1e-9)
                progress(step, total_steps, {"loss": losses[-1]["loss"], "tokens/s": round(rate, 1)})
    finally:
        model.eval()
    seconds = time.perf_counter() - started

    weights = _adapter_state(model, internal, accelerator, fsdp)
    if main:
        adapter_dir.mkdir(parents=True, exist_ok=True)
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in weights.items()},
            str(adapter_dir / "adapter_model.safetensors"),
        )
        accelerator.unwrap_model(model).peft_config[internal].save_pretrained(str(adapter_dir))
    accelerator.wait_for_everyone()
    shard = {"rank": rank, "examples": [seen[e] for e in sorted(seen)], "tokens": shard_tokens}
    return TrainingOutcome(
        adapter_dir,
        files_fingerprint(adapter_dir),
        step,
        tokens_trained,
        seconds,
        resumed_from,
        losses,
        model_loads=0,
        shards=[shard],
    )


def _counted(example: Example, max_length: int) -> int:
    """Counted tokens of an example as trained (truncated): the tokens_trained statistic."""
    return sum(example[1][:max_length])


def _targets(example: Example, max_length: int) -> int:
    """Counted tokens the loss predicts: every counted one but the first position, which nothing precedes."""
    return sum(example[1][1:max_length])


def _shard_loss(model, shard: Sequence[Example], pad_id: int, max_length: int, accelerator):
    """(sum of the negative log-likelihood of the shard's counted tokens, the same detached), in float32."""
    input_ids, attention, labels = _collate(shard, pad_id, max_length)
    device = accelerator.device
    logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits
    nll = torch.nn.functional.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.shape[-1]),
        labels[:, 1:].reshape(-1).to(device),
        ignore_index=IGNORED,
        reduction="sum",
    )
    return nll, nll.detach()


def _decoder_layers(model) -> list:
    """The transformer blocks of a (PEFT-wrapped) causal LM, FSDP's units."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for path in ("model.layers", "model.decoder.layers", "transformer.h", "gpt_neox.layers"):
        node = base
        for part in path.split("."):
            node = getattr(node, part, None)
        if node is not None:
            return list(node)
    raise TrainingError(f"strategy fsdp: cannot find the decoder layers of {type(base).__name__}")


def _shard(model, device) -> None:
    """FSDP2: each decoder layer, then the rest, sharded across the ranks (the frozen base too)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    for layer in _decoder_layers(model):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)


def _full(tensor):
    """A parameter whole: FSDP's sharded DTensor gathered (a collective), a plain tensor as it is."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def _adapter_state(model, internal: str, accelerator, fsdp: bool) -> dict:
    """The adapter's weights, named as PEFT saves them (every rank gets them; under FSDP only the trainable
    parameters are gathered, never the frozen base)."""
    from peft import get_peft_model_state_dict

    unwrapped = accelerator.unwrap_model(model)
    if not fsdp:
        return get_peft_model_state_dict(unwrapped, adapter_name=internal)
    trained = {n: _full(p.detach()).cpu() for n, p in unwrapped.named_parameters() if p.requires_grad}
    return get_peft_model_state_dict(unwrapped, state_dict=trained, adapter_name=internal)


def _set_adapter_state(model, weights: dict, internal: str) -> None:
    from peft import set_peft_model_state_dict

    set_peft_model_state_dict(model, weights, adapter_name=internal)


def _optimizer_state(model, optimizer, fsdp: bool) -> dict:
    if not fsdp:
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True))


def _set_optimizer_state(model, optimizer, state: dict, fsdp: bool) -> None:
    if not fsdp:
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


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
