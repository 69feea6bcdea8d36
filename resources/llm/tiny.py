"""The embedded default model: a tiny Llama built locally and deterministically.

The tokenizer is a byte-level BPE trained on the project's own sample corpus
(the text files under ``data/``); the weights are drawn from a fixed seed. The
model directory is named by a hash of the corpus and the configuration, so a
changed corpus builds a new model and an unchanged one is reused.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

# The embedded models: one architecture and tokenizer, weights drawn from different seeds. "tiny" is the
# default; "tiny-b" is a second model of the same size, so experiments have two local models to compare.
SEEDS = {"tiny": 1234, "tiny-b": 5678}
VOCAB_SIZE = 2048
MODEL_CONFIG = {
    "hidden_size": 64,
    "intermediate_size": 172,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 16384,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
}
BOS, EOS, PAD = "<|begin_of_text|>", "<|end_of_text|>", "<|pad|>"
CHAT_TOKENS = ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
# The Llama 3 chat layout, so prompts built with apply_chat_template look like the real thing.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n{{ message['content'] }}<|eot_id|>"
    "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
CORPUS_SUFFIXES = {".csv", ".json", ".txt", ".md"}
# Real tokenizers hold these answer words as single tokens (" True", " Aye", option letters);
# the tiny one is taught them too, so scoring takes the same paths as with a real model.
_WORDS = ["True", "False", "Yes", "No", "Aye", "Naye", *"ABCDEFGHIJK"]
ANSWER_WORDS = " " + " ".join(_WORDS) + "\n" + "\n".join(_WORDS)


def corpus_files(data_dir: Path) -> list[Path]:
    return sorted(p for p in data_dir.rglob("*") if p.is_file() and p.suffix in CORPUS_SUFFIXES)


def corpus_digest(files: list[Path], data_dir: Path) -> str:
    # This file defines the build, so a change to it builds a new model.
    h = hashlib.sha256(Path(__file__).read_bytes())
    for f in files:
        h.update(str(f.relative_to(data_dir)).encode())
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()[:16]


def tiny_model_dir(models_dir: Path, data_dir: Path, name: str = "tiny") -> Path:
    """Build the embedded model ``name`` (one of SEEDS) if needed and return its directory."""
    files = corpus_files(data_dir)
    target = models_dir / f"{name}-{corpus_digest(files, data_dir)}"
    if (target / "config.json").exists():
        return target
    models_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=models_dir))
    try:
        _build(staging, files, SEEDS[name])
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / "config.json").exists():  # another process did not win the race
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _build(out: Path, files: list[Path], seed: int) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[BOS, EOS, PAD, *CHAT_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = [f.read_text(encoding="utf-8", errors="replace") for f in files] + [ANSWER_WORDS] * 200
    tokenizer.train_from_iterator(texts, trainer=trainer)
    bos_id = tokenizer.token_to_id(BOS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=CHAT_TOKENS,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(fast),
        bos_token_id=bos_id,
        eos_token_id=[fast.convert_tokens_to_ids(EOS), fast.convert_tokens_to_ids("<|eot_id|>")],
        pad_token_id=fast.pad_token_id,
        **MODEL_CONFIG,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = fast.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
