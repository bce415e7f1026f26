"""``microfm-data``: download public datasets, check a dataset, compose the EM dataset.

microfm-data fetch livecell                       # resumable, verified, prints the licence
microfm-data fetch --list
microfm-data check data=folder data.root=/data/bbbc039
microfm-data compose --lucchi DIR --vnc DIR --out DIR
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from microfm.cli import user_errors
from microfm.errors import MicrofmError


def default_cache_dir() -> str:
    """``$MICROFM_CACHE`` or ``~/.cache/microfm`` (as ``paths.cache_dir`` in the configs)."""
    return os.environ.get("MICROFM_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "microfm"
    )


def _fetch(args: argparse.Namespace) -> None:
    from microfm.data.downloads import fetch
    from microfm.data.registry import DATASETS

    if args.list or not args.name:
        for name, source in sorted(DATASETS.items()):
            print(f"{name:16s} {source.description}\n{'':16s} licence: {source.licence}")
        return
    fetch(args.name, args.cache_dir, mirror=args.mirror, retries=args.retries)


def _fmt_counts(counts: dict) -> str:
    return ", ".join(f"{k} ({v})" for k, v in counts.items())


def describe(dm) -> list[str]:
    """Lines describing each split of a set-up DataModule (``check``'s output)."""
    from microfm.data.file_datamodule import FileDataModule

    lines = []
    if isinstance(dm, FileDataModule):
        for split, info in dm.summary().items():
            lines.append(f"{split}: {info['images']} images")
            lines.append(f"  shapes (CxHxW): {_fmt_counts(info['shapes'])}")
            lines.append(f"  dtypes: {_fmt_counts(info['dtypes'])}")
            if "objects" in info:
                empty = info["images_without_objects"]
                lines.append(
                    f"  labelled objects: {info['objects']} ({empty} image(s) without objects)"
                )
            if "mask_values" in info:
                lines.append(f"  mask values: {info['mask_values']}")
            if "classes" in info:
                lines.append(f"  classes: {_fmt_counts(info['classes'])}")
            if "domains" in info:
                lines.append(f"  domains: {_fmt_counts(info['domains'])}")
        if dm.skipped:
            lines.append(f"skipped {len(dm.skipped)} bad sample(s) (data.on_error=skip):")
            lines.extend(f"  {m}" for m in dm.skipped)
        return lines
    import numpy as np

    for split, ds in dm.datasets.items():
        samples = getattr(ds, "samples", [])
        shapes = {"x".join(map(str, np.shape(s["image"]))) for s in samples}
        objects = sum(int(np.asarray(s["instances"]).max()) for s in samples if "instances" in s)
        lines.append(f"{split}: {len(ds)} images")
        lines.append(f"  shapes (CxHxW): {', '.join(sorted(shapes))}")
        if objects:
            lines.append(f"  labelled objects: {objects}")
    return lines


def _check(args: argparse.Namespace) -> None:
    from microfm.run.build import build, check_settings
    from microfm.run.config import compose

    cfg = compose(args.overrides)
    check_settings(cfg)
    # the data alone: whether they suit a task's targets is checked when training starts
    dm = build(cfg.data, "data", augment=None, targets=[])
    dm.setup("fit")  # the checks training runs, the batch size against the training set included
    root = getattr(dm, "root", None)
    print(f"{type(dm).__name__}" + (f" at {root}" if root is not None else ""))
    for line in describe(dm):
        print(line)
    if getattr(dm, "domain_names", None):
        print(f"domain names: {list(dm.domain_names)}")
    if getattr(dm, "class_names", None):
        print(f"class names: {list(dm.class_names)}")


def _compose(args: argparse.Namespace) -> None:
    from microfm.data.compose import compose_em
    from microfm.data.downloads import dataset_dir
    from microfm.data.registry import DATASETS

    lucchi, vnc = args.lucchi, args.vnc
    if lucchi is None and vnc is None:  # both from the fetch cache
        lucchi = dataset_dir("lucchi_pp", args.cache_dir) / DATASETS["lucchi_pp"].root
        vnc = dataset_dir("drosophila_vnc", args.cache_dir) / DATASETS["drosophila_vnc"].root
    counts = compose_em(args.out, lucchi, vnc, args.vnc_test_fraction)
    for split, by_source in counts.items():
        print(f"{split}: {_fmt_counts(by_source)}")
    print(f"use it with: microfm-train data=em_composed data.root={args.out}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="microfm-data", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fetch", help="download a public dataset into the cache")
    f.add_argument("name", nargs="?", help="dataset name (see --list)")
    f.add_argument("--list", action="store_true", help="list the known datasets")
    f.add_argument("--cache-dir", default=default_cache_dir(), help="cache root")
    f.add_argument("--mirror", default=None, help="base URL replacing the original servers")
    f.add_argument("--retries", type=int, default=3, help="attempts (each resumes)")
    f.set_defaults(func=_fetch)
    c = sub.add_parser("check", help="validate a dataset and describe its splits (Hydra overrides)")
    c.add_argument("overrides", nargs="*", help="e.g. data=folder data.root=/path")
    c.set_defaults(func=_check)
    m = sub.add_parser("compose", help="build the em_composed layout from Lucchi++ and VNC")
    m.add_argument("--lucchi", default=None, help="the Lucchi++ folder")
    m.add_argument("--vnc", default=None, help="the groundtruth-drosophila-vnc folder")
    m.add_argument("--out", required=True, help="output folder")
    m.add_argument("--vnc-test-fraction", type=float, default=0.25)
    m.add_argument("--cache-dir", default=default_cache_dir(), help="fetch cache root")
    m.set_defaults(func=_compose)
    return p


def main(argv: Sequence[str] | None = None) -> None:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    args = parser().parse_args(argv)
    with user_errors(
        "microfm-data", errors=(MicrofmError, HydraException, OmegaConfBaseException), logged=False
    ):
        args.func(args)


if __name__ == "__main__":
    main()
