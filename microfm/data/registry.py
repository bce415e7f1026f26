"""Public datasets ``microfm-data fetch NAME`` knows: URLs, checksums, licences.

A small explicit dict. ``sha256`` is the published (or independently recorded) SHA-256 of the
file; ``None`` where no checksum could be established without downloading the file (this
registry was written offline): such files are verified on later downloads against the checksum
recorded at the first one (see :mod:`microfm.data.downloads`).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset.

    Attributes:
        url: where to download it.
        filename: name in the cache folder.
        sha256: expected SHA-256 (None: unknown, recorded on first download).
        unpack: extract the archive after download.
        checksum_source: where the checksum comes from (or why it is missing).
    """

    url: str
    filename: str
    sha256: str | None = None
    unpack: bool = True
    checksum_source: str = ""


@dataclass(frozen=True)
class DatasetSource:
    """A downloadable dataset: its files, licence, citation and how to use it."""

    description: str
    files: tuple[RemoteFile, ...]
    licence: str
    citation: str
    homepage: str = ""
    root: str = ""
    usage: str = ""


_UNKNOWN = "not published by the provider and not known offline; recorded at first download"

DATASETS: MappingProxyType[str, DatasetSource] = MappingProxyType(
    {
        "livecell": DatasetSource(
            description="LIVECell: 5,239 phase-contrast images of 8 cell lines, 1.6M cells "
            "(COCO annotations, official train/val/test)",
            files=(
                RemoteFile(
                    "http://livecell-dataset.s3.eu-central-1.amazonaws.com/"
                    "LIVECell_dataset_2021/images.zip",
                    "images.zip",
                    checksum_source=_UNKNOWN,
                ),
                *(
                    RemoteFile(
                        "http://livecell-dataset.s3.eu-central-1.amazonaws.com/"
                        f"LIVECell_dataset_2021/annotations/LIVECell/livecell_coco_{s}.json",
                        f"livecell_coco_{s}.json",
                        unpack=False,
                        checksum_source=_UNKNOWN,
                    )
                    for s in ("train", "val", "test")
                ),
            ),
            licence="CC BY-NC 4.0 (non-commercial use only)",
            citation="Edlund C. et al., LIVECell - A large-scale dataset for label-free live "
            "cell segmentation. Nature Methods 18, 1038-1045 (2021)",
            homepage="https://sartorius-research.github.io/LIVECell/",
            usage="microfm-train data=livecell data.root={root}",
        ),
        "lucchi_pp": DatasetSource(
            description="Lucchi++: EPFL hippocampus FIB-SEM (2x165 slices, 768x1024) with "
            "corrected mitochondria labels",
            files=(
                RemoteFile(
                    "http://www.casser.io/files/lucchi_pp.zip",
                    "lucchi_pp.zip",
                    "770ce9e98fc6f29c1b1a250c637e6c5125f2b5f1260e5a7687b55a79e2e8844d",
                    checksum_source="as recorded by constantinpape/torch-em (lucchi.py)",
                ),
            ),
            licence="no licence stated by the distributor; images from the EPFL CVLab EM "
            "dataset, research use with citation",
            citation="Lucchi A. et al., Learning structured models for segmentation of 2D and "
            "3D imagery, IEEE TMI 34(5), 2015; Casser V. et al., Fast mitochondria detection "
            "for connectomics, MIDL 2020",
            homepage="https://sites.google.com/view/connectomics/",
            root="Lucchi++",
            usage="microfm-data compose --lucchi {root} --vnc <vnc folder> --out <em_composed>",
        ),
        "drosophila_vnc": DatasetSource(
            description="Drosophila larva VNC ssTEM (Gerhard et al.): 2 stacks of 20 slices "
            "1024x1024, mitochondria/membrane/synapse labels on stack 1",
            files=(
                RemoteFile(
                    "https://github.com/unidesigner/groundtruth-drosophila-vnc/archive/refs/"
                    "heads/master.zip",
                    "groundtruth-drosophila-vnc-master.zip",
                    "f7bd0db03c86b64440a16b60360ad60c0a4411f89e2c021c7ee2c8d6af3d7e86",
                    checksum_source="as recorded by constantinpape/torch-em (vnc.py); GitHub "
                    "branch archives can change if the repository does",
                ),
            ),
            licence="CC BY-NC-SA 3.0 (non-commercial, share-alike)",
            citation="Gerhard S., Funke J., Martel J., Cardona A., Fetter R. Segmented "
            "anisotropic ssTEM dataset of neural tissue. figshare (2013), "
            "doi:10.6084/m9.figshare.856713",
            homepage="https://github.com/unidesigner/groundtruth-drosophila-vnc",
            root="groundtruth-drosophila-vnc-master",
            usage="microfm-data compose --lucchi <Lucchi++ folder> --vnc {root} "
            "--out <em_composed>",
        ),
        "bbbc039": DatasetSource(
            description="BBBC039: 200 widefield fluorescence images of U2OS nuclei (16-bit), "
            "23,000 annotated nuclei, official training/validation/test lists",
            files=(
                RemoteFile(
                    "https://data.broadinstitute.org/bbbc/BBBC039/images.zip",
                    "images.zip",
                    checksum_source=_UNKNOWN,
                ),
                RemoteFile(
                    "https://data.broadinstitute.org/bbbc/BBBC039/masks.zip",
                    "masks.zip",
                    checksum_source=_UNKNOWN,
                ),
                RemoteFile(
                    "https://data.broadinstitute.org/bbbc/BBBC039/metadata.zip",
                    "metadata.zip",
                    checksum_source=_UNKNOWN,
                ),
            ),
            licence="CC0 1.0",
            citation="Caicedo J.C. et al., Evaluation of deep learning strategies for nucleus "
            "segmentation in fluorescence images, Cytometry A 95(9), 2019; Ljosa V. et al., "
            "Nature Methods 9:637 (2012)",
            homepage="https://bbbc.broadinstitute.org/BBBC039",
            usage="the masks are colour-coded PNGs, not label images: convert them to one "
            "label per nucleus in labels/ beside images/, then data=folder data.root={root}",
        ),
    }
)
