"""Loading models and tokenizers (safetensors, no remote code by default), LoRA, and export."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from orpo.tiny import ensure_tiny_model
from orpo.trainer_config import LoraConfig, ModelConfig

TINY = "tiny"


def resolve_model_path(cfg: ModelConfig, output_dir: str | Path) -> str:
    """The path or hub name to load; ``tiny`` builds the tiny model under ``output_dir``."""
    if cfg.name_or_path == TINY:
        return str(ensure_tiny_model(Path(output_dir) / "base_model"))
    return cfg.name_or_path


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return getattr(torch, name)


def load_tokenizer(path: str, cfg: ModelConfig) -> Any:
    tokenizer = AutoTokenizer.from_pretrained(path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    if tokenizer.pad_token_id is None:
        # Llama/Mistral ship no pad token; padding is masked everywhere, so EOS is safe.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(path: str, cfg: ModelConfig, device: torch.device | None, dtype: torch.dtype | None = None
               ) -> torch.nn.Module:
    """``from_pretrained`` from safetensors; ``trust_remote_code`` only when the config says so.

    ``device=None`` leaves the model where it loaded (DeepSpeed places it itself).
    """
    model = AutoModelForCausalLM.from_pretrained(
        path,
        revision=cfg.revision,
        trust_remote_code=cfg.trust_remote_code,
        use_safetensors=True,
        dtype=dtype or resolve_dtype(cfg.dtype, device or torch.device("cpu")),
        attn_implementation=cfg.attn_implementation,
    )
    return model.to(device) if device is not None else model


def prepare_for_training(model: torch.nn.Module, cfg: ModelConfig) -> torch.nn.Module:
    """Gradient checkpointing and LoRA, as configured."""
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if cfg.lora.enabled:
        model = apply_lora(model, cfg.lora)
        if cfg.gradient_checkpointing:
            model.enable_input_require_grads()
    return model


def apply_lora(model: torch.nn.Module, cfg: LoraConfig) -> torch.nn.Module:
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    targets: Any = cfg.target_modules
    if targets == ["all-linear"]:
        targets = "all-linear"
    peft_config = PeftLoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                                 target_modules=targets, task_type="CAUSAL_LM")
    return get_peft_model(model, peft_config)


def is_peft(model: torch.nn.Module) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "merge_and_unload")


def export_model(model: torch.nn.Module, tokenizer: Any, out_dir: str | Path, lora_save: str = "merged",
                 state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """Save an HF checkpoint (safetensors) plus tokenizer that ``from_pretrained`` loads.

    LoRA models are merged into their base unless ``lora_save == "adapter"``, which writes the
    adapter alone (load it with ``peft.AutoPeftModelForCausalLM``).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if is_peft(model) and lora_save == "merged":
        model = model.merge_and_unload()
    model.save_pretrained(out_dir, state_dict=state_dict, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir
