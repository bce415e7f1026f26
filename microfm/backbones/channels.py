"""Any channel count on an RGB-pretrained ViT.

Microscopy images have 1, 2, 4 or more channels; pretrained patch embeddings expect 3. Modes
(``backbone.channel_mode``):

- ``sum``: one channel; the kernel is the sum of the RGB kernels, so a grey image gives exactly
  the embedding of the same grey RGB image.
- ``repeat``: the RGB kernels are repeated over the channels (channel ``c`` takes the kernel of
  RGB channel ``c mod 3``, divided by the number of channels that share it); with fewer than
  three channels the spare RGB kernels are added to channel ``k mod C``.
- ``mean``: every channel takes the mean RGB kernel, scaled by 3/C ("copy-mean").
- ``adapter``: the RGB patch embedding is kept and a learned 1×1 convolution C -> 3 in front of
  it (:class:`ChannelAdapter`) maps the channels to pseudo-RGB; it starts as the channel mean
  copied to R, G and B.
- ``auto``: ``sum`` for one channel, ``repeat`` otherwise.

All of them keep the response to an image whose channels are equal, so pretrained features
start where they were. No 8-bit step anywhere: inputs stay float.
"""

from __future__ import annotations

import torch
from torch import nn

from microfm.errors import ConfigError

CHANNEL_MODES = ("auto", "sum", "repeat", "mean", "adapter")


def adapt_patch_kernel(weight: torch.Tensor, in_chans: int, mode: str = "auto") -> torch.Tensor:
    """Adapt a patch-embedding kernel (D, C0, p, p) to ``in_chans`` input channels."""
    src = weight.shape[1]
    if src == in_chans:
        return weight
    if mode == "auto":
        mode = "sum" if in_chans == 1 else "repeat"
    if mode == "sum":
        if in_chans != 1:
            raise ConfigError(
                f"backbone.channel_mode=sum needs one input channel, got {in_chans}; use "
                "repeat, mean or adapter"
            )
        return weight.sum(dim=1, keepdim=True)
    if mode == "repeat":
        mix = torch.zeros(in_chans, src, dtype=weight.dtype)
        for k in range(src):
            owners = list(range(k, in_chans, src)) if in_chans >= src else [k % in_chans]
            mix[owners, k] = 1.0 / len(owners)
        return torch.einsum("ck,dkhw->dchw", mix, weight)
    if mode == "mean":
        return weight.mean(dim=1, keepdim=True).repeat(1, in_chans, 1, 1) * (src / in_chans)
    raise ConfigError(f"backbone.channel_mode must be one of {CHANNEL_MODES}, got {mode!r}")


class ChannelAdapter(nn.Module):
    """A learned 1×1 convolution from ``in_chans`` channels to the ``out_chans`` the pretrained
    patch embedding expects, initialised to copy the channel mean to every output channel.

    Args:
        in_chans: channels of the data.
        out_chans: channels of the pretrained model (3).

    Example:
        >>> adapter = ChannelAdapter(4)
        >>> x = torch.full((1, 4, 2, 2), 0.5)
        >>> torch.allclose(adapter(x), torch.full((1, 3, 2, 2), 0.5))
        True
    """

    def __init__(self, in_chans: int, out_chans: int = 3) -> None:
        super().__init__()
        self.in_chans, self.out_chans = int(in_chans), int(out_chans)
        self.proj = nn.Conv2d(self.in_chans, self.out_chans, kernel_size=1)
        with torch.no_grad():
            self.proj.weight.fill_(1.0 / self.in_chans)
            self.proj.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)
