"""Finetuning modes and LoRA/DoRA injection with a proof that every adapter is used."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from microfm.errors import ConfigError

log = logging.getLogger(__name__)

MODES = ("frozen", "full", "lora", "dora")


def _target_regex(target_modules: Sequence[str], blocks: Sequence[int] | None) -> str:
    """A peft regex matching ``blocks.<i>.<target>`` for the chosen blocks and targets."""
    block = "|".join(str(int(b)) for b in blocks) if blocks is not None else r"\d+"
    targets = "|".join(t.replace(".", r"\.") for t in target_modules)
    return rf"(.*\.)?blocks\.({block})\.({targets})"


def apply_lora(
    model: nn.Module,
    r: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.0,
    target_modules: Sequence[str] = ("attn.qkv",),
    blocks: Sequence[int] | None = None,
    use_dora: bool = False,
) -> list[str]:
    """Inject LoRA (or DoRA) adapters into the Linear layers ``blocks.<i>.<target>`` of
    ``model`` in place, freeze everything else, and check that each adapter is used.

    Targets are qualified names such as ``attn.qkv``, ``attn.proj``, ``mlp.fc1``: a bare
    ``proj`` would also match the patch-embedding convolution.

    Returns:
        The qualified names of the wrapped modules.
    """
    from peft import LoraConfig, inject_adapter_in_model

    if r < 1:
        raise ConfigError(f"finetune.lora.r must be >= 1, got {r}")
    if not target_modules:
        raise ConfigError("finetune.lora.target_modules is empty")
    regex = _target_regex(target_modules, blocks)
    config = LoraConfig(
        r=int(r),
        lora_alpha=float(alpha),
        lora_dropout=float(dropout),
        target_modules=regex,
        use_dora=bool(use_dora),
    )
    try:
        inject_adapter_in_model(config, model)
    except ValueError as exc:
        raise ConfigError(
            f"finetune.lora.target_modules={list(target_modules)} matched no layer of the "
            f"backbone ({exc})"
        ) from None
    wrapped = sorted(
        name
        for name, module in model.named_modules()
        if hasattr(module, "lora_A") and module.lora_A
    )
    for name, p in model.named_parameters():
        p.requires_grad = "lora_" in name
    verify_adapters(model, wrapped)
    return wrapped


def verify_adapters(model: nn.Module, wrapped: Sequence[str]) -> None:
    """Prove that every adapter takes part in the backbone output.

    One forward/backward pass of a random projection of the output on a random input: the
    gradient of an adapter's ``lora_B`` is exactly zero if and only if the forward pass never
    goes through that adapter (for example an attention that calls ``F.linear`` on
    ``qkv.weight`` directly instead of calling the wrapped ``qkv`` layer). Training such an
    adapter would silently do nothing, so this is an error.

    Raises:
        RuntimeError: naming the bypassed modules.
    """
    device = next(model.parameters()).device
    if device.type == "meta":  # architecture only (e.g. microfm-inspect of a 7B model)
        log.info("LoRA adapters not verified: the model is on the meta device")
        return
    modules = dict(model.named_modules())
    patch = getattr(model, "patch_embed", None)
    in_chans = patch.proj.in_channels if patch is not None else 3
    size = patch.patch_size[0] * 2 if patch is not None else 32
    params = {name: list(modules[name].lora_B.parameters()) for name in wrapped}
    flags = {id(p): p.requires_grad for ps in params.values() for p in ps}
    was_training = model.training
    model.eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, in_chans, size, size, generator=g).to(device)
    try:
        with torch.enable_grad():
            for ps in params.values():
                for p in ps:
                    p.requires_grad_(True)
                    p.grad = None
            out = model.forward_features(x)
            probe = torch.randn(out.shape, generator=g).to(device=device, dtype=out.dtype)
            if out.requires_grad:
                (out * probe).sum().backward()
        bypassed = [
            name
            for name, ps in params.items()
            if all(p.grad is None or not torch.any(p.grad != 0) for p in ps)
        ]
    finally:
        for ps in params.values():
            for p in ps:
                p.grad = None
                p.requires_grad_(flags[id(p)])
        model.train(was_training)
    if bypassed:
        raise RuntimeError(
            f"LoRA adapters on {bypassed} do not take part in the backbone output: the forward "
            "pass bypasses these layers, so training them would do nothing"
        )


def merge_adapters(model: nn.Module) -> nn.Module:
    """Fold every LoRA/DoRA adapter into its base layer and remove the adapter wrappers, in
    place (for export and fast inference). The merged model computes the same function.

    Returns:
        ``model``, whose adapted layers are plain ``nn.Linear`` again.
    """
    wrapped = [
        (name, module)
        for name, module in model.named_modules()
        if hasattr(module, "lora_A") and hasattr(module, "get_base_layer")
    ]
    for name, module in wrapped:
        module.merge()
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, module.get_base_layer())
    return model


class Finetune:
    """How the backbone is adapted.

    Args:
        name: config name (for run ids).
        mode: ``frozen`` (only heads train), ``full`` (all weights train), ``lora`` or ``dora``.
        lora: adapter settings (``r``, ``alpha``, ``dropout``, ``target_modules``, ``blocks``)
            for the lora/dora modes.
        allow_random: adapt a randomly initialised backbone as asked. By default frozen/LoRA on
            random weights switch to full fine-tuning, with a warning: adapters on a random
            network learn little.

    Example:
        >>> from microfm.backbones import build_backbone
        >>> bb = build_backbone("vit_test", in_chans=1)
        >>> Finetune("lora", "lora", {"r": 4}, allow_random=True).apply(bb).mode
        'lora'
    """

    def __init__(
        self,
        name: str,
        mode: str,
        lora: Mapping[str, object] | None = None,
        allow_random: bool = False,
    ) -> None:
        if mode not in MODES:
            raise ConfigError(f"finetune.mode must be one of {MODES}, got {mode!r}")
        self.name = name
        self.mode = mode
        self.lora = dict(lora or {})
        self.allow_random = allow_random
        self.wrapped: list[str] = []

    def apply(self, backbone: nn.Module) -> Finetune:
        """Configure ``backbone`` (a :class:`microfm.backbones.Backbone`) in place.

        Returns:
            The finetune actually applied (may differ from ``self`` for random weights).
        """
        mode = self.mode
        if mode != "full" and not getattr(backbone, "pretrained", True) and not self.allow_random:
            log.warning(
                "finetune=%s on a backbone with random weights would adapt noise; training the "
                "full backbone instead (finetune.mode=full). Pass backbone.weights=... to use %s, "
                "or finetune.allow_random=true to force it.",
                mode,
                mode,
            )
            return Finetune("full", "full").apply(backbone)
        if mode == "full":
            for p in backbone.parameters():
                p.requires_grad = True
        elif mode == "frozen":
            for p in backbone.parameters():
                p.requires_grad = False
        else:
            opts = dict(self.lora)
            self.wrapped = apply_lora(backbone.model, use_dora=(mode == "dora"), **opts)
            log.info("%s adapters on %d modules", mode, len(self.wrapped))
        adapter = getattr(backbone, "channel_adapter", None)
        if adapter is not None:  # new weights in front of the pretrained ones: always trained
            for p in adapter.parameters():
                p.requires_grad = True
        return self
