"""``task=mae``: masked-autoencoder pretraining (He et al. 2022; STED-FM's recipe) of any
microfm backbone, any channel count."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from microfm.backbones.masking import (
    encode_tokens,
    masked_image,
    patchify,
    random_keep,
    unpatchify,
)
from microfm.heads.mae_decoder import MAEDecoder
from microfm.losses.mae import MAELoss
from microfm.modules.optim import OptimConfig
from microfm.modules.ssl_base import SSLModule
from microfm.transforms.multicrop import MultiCrop
from microfm.utils.seeding import derive_seed, sample_seeds

_ENCODER = 300  # purpose of the seeds of the encoder's drop-path choices


class MAEModule(SSLModule):
    """Random patch masking, the encoder on the visible patches only (absolute or rotary
    position embeddings), a light decoder, MSE on the masked patches.

    Logs ``train/loss`` and ``val/loss``; keeps the first validation batch for the
    reconstruction figure (:class:`microfm.callbacks.Reconstructions`).

    Args:
        backbone: the encoder (:class:`microfm.backbones.Backbone`).
        decoder: the :class:`~microfm.heads.MAEDecoder`.
        optim: optimiser settings (MAE: AdamW lr 1.5e-4, betas (0.9, 0.95), wd 0.05).
        mask_ratio: fraction of patches hidden from the encoder.
        norm_pix_loss: regress per-patch normalised pixels.
        views: augmentation producing one view per image (``n_global=1, n_local=0``), or None
            to train on the data's images as they come.
        num_figures: validation images kept for the reconstruction figure.
        **kwargs: see :class:`~microfm.modules.ssl_base.SSLModule` (``name``, ``monitor``,
            ``seed``, ``in_chans``, ``layer_decay``, ``backbone_freeze``...).

    Example:
        >>> from microfm.backbones import build_backbone
        >>> bb = build_backbone("vit_test", in_chans=1)
        >>> mae = MAEModule(bb, MAEDecoder(64, 8, 1, dim=32, depth=1, num_heads=4))
        >>> loss, pred, mask = mae.step(torch.rand(2, 1, 32, 32))
        >>> pred.shape, int(mask.sum())
        (torch.Size([2, 16, 64]), 24)
    """

    def __init__(
        self,
        backbone: nn.Module,
        decoder: MAEDecoder,
        optim: OptimConfig | None = None,
        mask_ratio: float = 0.75,
        norm_pix_loss: bool = True,
        views: MultiCrop | None = None,
        num_figures: int = 4,
        name: str = "mae",
        monitor: str = "val/loss",
        mode: str = "min",
        targets: Sequence[str] = (),
        **kwargs,
    ) -> None:
        super().__init__(backbone, optim, name, monitor, mode, targets, **kwargs)
        self.decoder = decoder
        self.mask_ratio = float(mask_ratio)
        random_keep(1, 4, self.mask_ratio)  # validates the ratio now
        self.loss = MAELoss(norm_pix=norm_pix_loss)
        self.views = views
        if views is not None:
            if views.n_views != 1:
                raise ValueError("task.views for MAE must give one view (n_global=1, n_local=0)")
            views.fit_patch(backbone.patch_size)
            self.check_view_channels(views.out_channels(self.in_chans), "task.views")
        self.num_figures = int(num_figures)
        self.figure_images: torch.Tensor | None = None

    def head_modules(self) -> nn.Module:
        return self.decoder

    def export_source(self) -> nn.Module:
        return self.backbone

    # -- the MAE step --------------------------------------------------------------------------
    def step(
        self,
        images: torch.Tensor,
        generator: torch.Generator | None = None,
        seeds: Sequence[int] | None = None,
    ):
        """Loss, predicted patches (B, N, p*p*C) and mask (B, N) of one batch.

        ``seeds`` (one per sample, :meth:`view_seeds`): each sample's mask and drop-path
        choices come from its seed (the same whatever the process and batch); else from
        ``generator`` or the global generator.
        """
        p = self.backbone.patch_size
        B, _, H, W = images.shape
        grid = (H // p, W // p)
        keep, mask = random_keep(
            B, grid[0] * grid[1], self.mask_ratio, images.device, generator, seeds=seeds
        )
        with sample_seeds(None if seeds is None else [derive_seed(s, _ENCODER) for s in seeds]):
            enc = encode_tokens(self.backbone, images, keep=keep)
        pred = self.decoder(enc["tokens"], keep, grid, num_prefix=enc["prefix"].shape[1])
        return self.loss(pred, patchify(images, p), mask), pred, mask

    def _images(self, batch: dict, train: bool) -> torch.Tensor:
        images = batch["image"]
        if isinstance(images, (list, tuple)):
            return images[0]
        if self.views is not None:
            return self.views(images, self.view_seeds(batch, train))[0]
        return images

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images = self._images(batch, train=True)
        loss, _, _ = self.step(images, seeds=self.view_seeds(batch, train=True))
        self.log("train/loss", loss, prog_bar=True, batch_size=images.shape[0])
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        images = self._images(batch, train=False)
        loss, _, _ = self.step(images, seeds=self.view_seeds(batch, train=False))
        self.log("val/loss", loss, prog_bar=True, batch_size=images.shape[0], sync_dist=True)
        if batch_idx == 0:
            self.figure_images = images[: self.num_figures].detach()

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, seed: int = 0) -> dict[str, torch.Tensor]:
        """``masked`` input (``mask`` (B, 1, H, W): 1 on hidden pixels) and ``reconstruction``
        (B, C, H, W) of images; with the per-patch
        normalised loss the prediction is mapped back with each true patch's mean and std (as
        in the MAE paper's figures). ``pasted``: the reconstruction with the visible patches
        of the input."""
        p = self.backbone.patch_size
        H, W = images.shape[-2:]
        was_training = self.training
        self.eval()
        try:
            _, pred, mask = self.step(images, torch.Generator().manual_seed(seed))
        finally:
            self.train(was_training)
        patches = patchify(images, p)
        if self.loss.norm_pix:
            mean = patches.mean(dim=-1, keepdim=True)
            std = (patches.var(dim=-1, keepdim=True) + self.loss.eps).sqrt()
            pred = pred * std + mean
        grid = (H // p, W // p)
        recon = unpatchify(pred, p, grid)
        pasted = unpatchify(torch.where(mask.unsqueeze(-1), pred, patches), p, grid)
        return {
            "image": images,
            "mask": 1.0 - masked_image(torch.ones_like(images[:, :1]), mask, p),
            "masked": masked_image(images, mask, p),
            "reconstruction": recon,
            "pasted": pasted,
        }
