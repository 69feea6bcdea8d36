"""LoRA training and merging for engines that serve adapters but cannot train them: transformers + PEFT on
a base model of their own.

vLLM's weights and a server's are not PyTorch modules this process can train. ``PeftTrainer`` loads the base
by path on the step's device for each run, trains (``training.train_lora``, the very loop the transformers
backend runs on its own model) or merges, saves the adapter directory and releases the model; the engine
then serves that directory (``Engine.train_adapter`` and ``merge_adapter`` fall back to the trainer). Only
the tokenizer stays loaded between runs: it lays chats out as training examples.

The base is the one the settings name for training (``PERSONA_TRAIN_MODEL``, by default the served model
where that is a local directory or a Hugging Face id in the local cache). It must be the base the engine
serves: an adapter is only meaningful on the weights it was trained on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from persona_platform.resources import training
from persona_platform.resources.llm.chat import chat_tokens, completion_tokens


@dataclass
class PeftTrainer:
    model_id: str  # the base as the settings name it: fingerprints and messages
    # Where from_pretrained reads the base (a directory or a Hugging Face id); may build the embedded model.
    locate: Callable[[], str]
    device: str = "auto"
    dtype: str = "auto"
    # Why the base cannot be loaded on this machine (None: it can, as far as can be told without loading it).
    problem: str | None = None
    loads: int = 0
    _tokenizer: object = field(default=None, repr=False)

    def unavailable(self) -> str | None:
        return self.problem

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(self.locate())
            if tokenizer.pad_token_id is None:
                tokenizer.pad_token = tokenizer.eos_token
            self._tokenizer = tokenizer
        return self._tokenizer

    def training_examples(
        self, chats: Sequence[Sequence[tuple[str, str]]], counted_role: str = "assistant"
    ) -> list[training.Example]:
        return [chat_tokens(self.tokenizer, list(chat), counted_role) for chat in chats]

    def completion_examples(self, pairs: Sequence[tuple[str, str]]) -> list[training.Example]:
        return [completion_tokens(self.tokenizer, prompt, completion) for prompt, completion in pairs]

    def train(
        self,
        name: str,
        examples: Sequence[training.Example],
        settings: training.LoraTraining,
        checkpoint_path: Path,
        adapter_dir: Path,
        log: Callable[[str], None] = lambda message: None,
        progress: Callable[[int, int, dict], None] | None = None,
    ) -> training.TrainingOutcome:
        """Train adapter ``name`` on a fresh load of the base (resuming from ``checkpoint_path``), save it in
        ``adapter_dir`` and release the model."""
        import torch
        from peft import get_peft_model

        training.prepare_run(name, examples, settings)
        device = training.resolve_device(self.device)
        if settings.processes > 1:
            from persona_platform.resources.launcher import train_in_processes

            log(
                f"{name}: training on {self.model_id}, a load of it in each of {settings.processes} processes"
            )
            outcome = train_in_processes(
                name,
                examples,
                settings,
                model_path=self.locate(),
                device="cuda" if device.startswith("cuda") else device,
                dtype=self.dtype,
                pad_id=self.tokenizer.pad_token_id,
                checkpoint_path=checkpoint_path,
                adapter_dir=adapter_dir,
                log=log,
                progress=progress,
            )
            self.loads += outcome.model_loads
            return outcome
        if settings.quantization == "4bit":
            torch.manual_seed(settings.seed)  # the LoRA initialisation
            model = training.quantized_for_training(self.locate(), name, settings)
            internal = f"{name}-qlora"
        else:
            base = self._load_base(device, training.resolve_dtype(self.dtype, device))
            torch.manual_seed(settings.seed)  # the LoRA initialisation, after the load, as on a served model
            model = get_peft_model(base, settings.lora_config(), adapter_name=name)
            del base
            internal = name
        self.loads += 1
        log(f"{name}: training on {self.model_id} loaded on {device} (released after training)")
        try:
            outcome = training.train_lora(
                model,
                internal,
                name,
                examples,
                settings,
                pad_id=self.tokenizer.pad_token_id,
                cpu=device == "cpu",
                checkpoint_path=checkpoint_path,
                adapter_dir=adapter_dir,
                log=log,
                progress=progress,
            )
            outcome.model_loads = 1  # its own load, released below
            return outcome
        finally:
            del model
            training.release(device)

    def merge(
        self,
        name: str,
        adapter_dir: str,
        out_dir: Path,
        check_texts: Sequence[str],
        max_check_tokens: int = 128,
    ) -> tuple[str, list[float]]:
        """The base with the adapter in ``adapter_dir`` merged in, saved with the tokenizer in ``out_dir``;
        (fingerprint, max |logit difference| per check text) against base + adapter. Float32 whatever the
        dtype setting: the check's tolerance is a float32 one, and the files hold the weights it checked."""
        import torch
        from peft import PeftModel

        device = training.resolve_device(self.device)
        check_inputs = [self.tokenizer(text)["input_ids"][:max_check_tokens] for text in check_texts]
        model = PeftModel.from_pretrained(
            self._load_base(device, torch.float32), adapter_dir, adapter_name=name
        )
        self.loads += 1
        try:
            return training.merge_own_copy(model, name, self.tokenizer, out_dir, check_inputs, device)
        finally:
            del model
            training.release(device)

    def _load_base(self, device: str, dtype):
        """The base on ``device``; on a bare ``cuda`` with several GPUs visible, spread over them by layer
        (the GPUs a tensor-parallel engine uses, so a model too large for one GPU still trains)."""
        import torch
        from transformers import AutoModelForCausalLM

        path = self.locate()
        if device == "cuda" and torch.cuda.device_count() > 1:
            return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, device_map="auto")
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)
