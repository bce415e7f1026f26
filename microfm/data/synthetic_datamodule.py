"""DataModule of the built-in synthetic fluorescence microscopy (``data=synthetic``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from torch.utils.data import Dataset

from microfm.data.datamodule import MicroscopyDataModule
from microfm.data.dense import DenseDataset
from microfm.data.synthetic import CLASS_NAMES, SEMANTIC_NAMES, SyntheticConfig, make_split
from microfm.errors import ConfigError


class SyntheticDataModule(MicroscopyDataModule):
    """Seeded synthetic nuclei images with instance, semantic, class and depth targets.

    Splits are fixed by ``seed``: the same seed always gives the same train/val/test images.

    Args:
        n_train, n_val, n_test: number of images per split.
        image_size: side of the square images (pixels).
        radius: range of mean nucleus radius per image (pixels).
        density: range of the covered area fraction per image.
        photons: range of peak photon counts (signal-to-noise).
        normalize: percentile normalisation (``low``, ``high``) applied per image and channel.
        num_classes: morphology classes of ``label`` (fixed by the generator: 3), declared so
            task configs can read ``${data.num_classes}``.
        num_semantic_classes: classes of ``semantic`` incl. background (fixed: 3).
        **kwargs: see :class:`MicroscopyDataModule`.

    Example:
        >>> dm = SyntheticDataModule(n_train=8, n_val=2, n_test=2, image_size=64, batch_size=4)
        >>> dm.setup()
        >>> dm.datasets["train"][0]["image"].shape
        torch.Size([1, 64, 64])
    """

    num_classes = len(CLASS_NAMES)
    class_names = CLASS_NAMES
    semantic_names = SEMANTIC_NAMES

    def __init__(
        self,
        n_train: int = 128,
        n_val: int = 32,
        n_test: int = 32,
        image_size: int = 128,
        radius: Sequence[float] = (5.0, 9.0),
        density: Sequence[float] = (0.15, 0.4),
        photons: Sequence[float] = (150.0, 1500.0),
        normalize: Mapping[str, float] | None = None,
        num_classes: int = len(CLASS_NAMES),
        num_semantic_classes: int = len(SEMANTIC_NAMES),
        in_chans: int = 1,
        augment: Callable | None = None,
        **kwargs,
    ) -> None:
        if in_chans != 1:
            raise ConfigError(f"data.in_chans must be 1 for data=synthetic, got {in_chans}")
        for key, given, fixed in (
            ("num_classes", num_classes, len(CLASS_NAMES)),
            ("num_semantic_classes", num_semantic_classes, len(SEMANTIC_NAMES)),
        ):
            if given != fixed:
                raise ConfigError(f"data.{key} is {fixed} for data=synthetic, got {given}")
        super().__init__(in_chans=in_chans, augment=augment, **kwargs)
        for key, n in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
            if n < 1:
                raise ConfigError(f"data.{key} must be at least 1, got {n}")
        self.sizes = {"train": n_train, "val": n_val, "test": n_test}
        self.image_size = int(image_size)
        self.generator_cfg = SyntheticConfig(
            image_size=self.image_size,
            radius=tuple(radius),
            density=tuple(density),
            photons=tuple(photons),
        )
        self.normalize = dict(normalize or {"low": 1.0, "high": 99.8})

    def build_datasets(self) -> dict[str, Dataset]:
        return {
            split: DenseDataset(
                make_split(self.seed, split, n, self.generator_cfg),
                augment=self.augment if split == "train" else None,
                targets=self.targets,
                seed=self.seed,
                normalize=self.normalize,
            )
            for split, n in self.sizes.items()
        }
