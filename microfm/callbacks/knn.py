"""Online kNN monitor for self-supervised runs: features of a small labelled probe set,
weighted k-nearest-neighbour accuracy (DINO's protocol) logged after every validation, so a
collapse (features that no longer separate anything) shows within an epoch or two."""

from __future__ import annotations

import logging

import lightning as L
import torch
from torch.utils.data import DataLoader

from microfm.analysis.knn import knn_predict
from microfm.analysis.scores import classification_scores
from microfm.errors import ConfigError

log = logging.getLogger(__name__)


def _center_crop(images: torch.Tensor, multiple: int) -> torch.Tensor:
    H, W = images.shape[-2:]
    h, w = H // multiple * multiple, W // multiple * multiple
    if (h, w) == (H, W):
        return images
    if h == 0 or w == 0:
        raise ConfigError(f"kNN probe images of {H}x{W} are smaller than the patch size {multiple}")
    top, left = (H - h) // 2, (W - w) // 2
    return images[..., top : top + h, left : left + w]


class KNNMonitor(L.Callback):
    """Logs ``val/knn/acc`` and ``val/knn/balanced_acc`` of a labelled probe data module
    (its ``train`` split is the kNN bank, its ``val`` split, else ``test``, the queries) with
    the features of ``pl_module.embed`` (the exported backbone: DINO's teacher, MAE's encoder).

    Args:
        probe: a microfm DataModule whose samples carry ``label`` (e.g. the synthetic data,
            or ``data=classification`` on ``mlcp_cellcycle``); None disables the monitor.
        k: neighbours.
        temperature: vote temperature.
        every_n_epochs: run after the validation of every n-th epoch.
        batch_size: feature-extraction batch size.

    Example:
        >>> from microfm.data import SyntheticDataModule
        >>> probe = SyntheticDataModule(n_train=32, n_val=16, n_test=1, image_size=32)
        >>> cb = KNNMonitor(probe, k=10)
    """

    def __init__(
        self,
        probe: L.LightningDataModule | None,
        k: int = 20,
        temperature: float = 0.07,
        every_n_epochs: int = 1,
        batch_size: int = 64,
    ) -> None:
        if int(k) < 1 or float(temperature) <= 0:
            raise ConfigError(
                f"callbacks.knn: k must be >= 1 and temperature > 0, got {k} and {temperature}"
            )
        self.probe = probe
        self.k = int(k)
        self.temperature = float(temperature)
        self.every_n_epochs = max(1, int(every_n_epochs))
        self.batch_size = int(batch_size)

    def on_fit_start(self, trainer, pl_module) -> None:
        if self.probe is None:
            return
        if not hasattr(pl_module, "embed"):
            raise ConfigError("callbacks.knn needs a self-supervised task (task=dino or task=mae)")
        self.probe.setup("fit")
        want = int(getattr(pl_module, "in_chans", 0))
        have = int(getattr(self.probe, "in_chans", want))
        if want and have != want:
            raise ConfigError(
                f"callbacks.knn.probe delivers {have}-channel images but the data has {want}: "
                "point callbacks.knn.probe at labelled images of your domain, or set "
                "callbacks.knn=null"
            )

    def _features(self, pl_module, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        ds = self.probe.datasets[split]
        loader = DataLoader(ds, batch_size=self.batch_size, shuffle=False, num_workers=0)
        feats, labels = [], []
        patch = int(pl_module.backbone.patch_size)
        for batch in loader:
            if "label" not in batch:
                raise ConfigError(f"callbacks.knn.probe: the {split} samples carry no label")
            images = _center_crop(batch["image"], patch).to(pl_module.device)
            feats.append(pl_module.embed(images).cpu())
            labels.append(batch["label"].long())
        return torch.cat(feats), torch.cat(labels)

    @torch.no_grad()
    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if self.probe is None or trainer.sanity_checking:
            return
        if trainer.current_epoch % self.every_n_epochs:
            return
        queries = "val" if "val" in self.probe.datasets else "test"
        bank, bank_labels = self._features(pl_module, "train")
        q, q_labels = self._features(pl_module, queries)
        pred = knn_predict(bank.numpy(), bank_labels.numpy(), q.numpy(), self.k, self.temperature)
        scores = classification_scores(q_labels.numpy(), pred)
        pl_module.log("val/knn/acc", scores["accuracy"])
        pl_module.log("val/knn/balanced_acc", scores["balanced_accuracy"])
