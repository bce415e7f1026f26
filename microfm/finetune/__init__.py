"""Adaptation of a backbone: frozen, full fine-tuning, or LoRA/DoRA adapters through peft."""

from microfm.finetune.adapt import Finetune, apply_lora, merge_adapters, verify_adapters

__all__ = ["Finetune", "apply_lora", "merge_adapters", "verify_adapters"]
