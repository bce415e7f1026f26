"""Records (one sample = an image file, optional plane, and its target files), matching files
by stem, and train/val/test splits by file lists or seeded fractions."""

from __future__ import annotations

import csv
import hashlib
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from microfm.data.io import image_stem, is_image_path
from microfm.errors import ConfigError, DataError

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Record:
    """One 2-D sample.

    Attributes:
        image: the image file (or tar archive when ``member`` is set).
        name: a unique, human-readable name (file stem, plus ``@z`` for a plane of a stack).
        plane: plane index inside a Z/T stack (None: the file holds one image).
        target_plane: plane index inside the target files (None: they hold one image).
        instances, semantic, depth: target files (same plane as the image when stacks).
        label: class index (classification).
        domain: index into the DataModule's ``domain_names``.
        member: file name inside a tar archive.
    """

    image: Path
    name: str
    plane: int | None = None
    instances: Path | None = None
    semantic: Path | None = None
    depth: Path | None = None
    label: int | None = None
    domain: int | None = None
    member: str | None = None
    target_plane: int | None = None

    @property
    def target_files(self) -> dict[str, Path]:
        return {
            k: v
            for k, v in (
                ("instances", self.instances),
                ("semantic", self.semantic),
                ("depth", self.depth),
            )
            if v is not None
        }

    def where(self) -> str:
        """The file (and plane/member) to name in messages."""
        where = f"{self.image}::{self.member}" if self.member else str(self.image)
        return f"{where} (plane {self.plane})" if self.plane is not None else where


def list_images(folder: Path, recursive: bool = False, suffix: str = "") -> list[Path]:
    """Image files (and ``.zarr`` folders) in ``folder`` whose stem ends with ``suffix``."""
    if not folder.is_dir():
        raise DataError(f"folder not found: {folder}")
    paths = folder.rglob("*") if recursive else folder.iterdir()
    out = []
    for p in paths:
        if p.name.startswith(".") or not is_image_path(p):
            continue
        if p.is_dir() and p.suffix.lower() != ".zarr":
            continue
        if any(part.lower().endswith(".zarr") for part in p.relative_to(folder).parts[:-1]):
            continue  # inside a zarr store
        if suffix and not image_stem(p).endswith(suffix):
            continue
        out.append(p)
    return sorted(out)


def by_stem(paths: Iterable[Path], suffix: str = "", root: Path | None = None) -> dict[str, Path]:
    """``{stem without suffix: path}``; two files with one stem are an error naming both."""
    out: dict[str, Path] = {}
    for p in paths:
        stem = image_stem(p)
        if suffix:
            stem = stem[: -len(suffix)]
        if root is not None:  # keep sub-folders in the key for recursive listings
            rel = p.parent.relative_to(root)
            stem = str(rel / stem) if str(rel) != "." else stem
        if stem in out:
            raise DataError(f"two files share the name {stem!r}: {out[stem]} and {p}")
        out[stem] = p
    return out


def match_targets(
    images: Mapping[str, Path], targets: Mapping[str, Path], kind: str, folder: Path
) -> None:
    """Every target must have an image and (when the folder exists) every image a target."""
    orphans = sorted(set(targets) - set(images))
    if orphans:
        shown = ", ".join(str(targets[k]) for k in orphans[:5])
        more = f" and {len(orphans) - 5} more" if len(orphans) > 5 else ""
        raise DataError(f"{kind} file(s) without a matching image: {shown}{more}")
    missing = sorted(set(images) - set(targets))
    if missing:
        shown = ", ".join(str(images[k]) for k in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise DataError(f"image(s) without a matching file in {folder}: {shown}{more}")


def read_name_list(path: Path) -> list[str]:
    """Names (file names or stems, one per line; ``#`` comments) of a split list file."""
    if not path.is_file():
        raise ConfigError(f"data.split: list file not found: {path}")
    names = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(image_stem(line))
    return names


def read_table(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV file with a header."""
    if not path.is_file():
        raise DataError(f"CSV file not found: {path}")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise DataError(f"{path}: the CSV file has no rows")
    return rows


def _rank(name: str, seed: int) -> str:
    return hashlib.sha1(f"{seed}:{name}".encode()).hexdigest()


def split_records(
    records: Sequence[Record],
    split: Mapping[str, object],
    root: Path,
    preset: Mapping[str, Sequence[Record]] | None = None,
) -> dict[str, list[Record]]:
    """Assign records to train/val/test.

    ``split`` maps each of ``train``/``val``/``test`` to None, a fraction, or a list file
    (relative to ``root``) of names, plus ``seed``. List files win; fractions take a seeded,
    stable share of what remains (ordering by a hash of the name, so adding files moves few
    others), stratified by domain and class label when present; ``train`` gets the rest.
    Records already assigned by the layout (``preset``, e.g. ``train/`` and ``test/``
    folders) keep their split; fractions then apply to the ``train`` pool.
    """
    known = set(SPLITS) | {"seed"}
    unknown = sorted(set(split) - known)
    if unknown:
        raise ConfigError(f"data.split has unknown keys {unknown}; known: {sorted(known)}")
    seed = int(split.get("seed") or 0)
    out: dict[str, list[Record]] = {s: list((preset or {}).get(s, ())) for s in SPLITS}
    pool = list(records) if preset is None else list(out["train"])
    if preset is not None:
        out["train"] = []
    by_name = {r.name: r for r in pool}
    base = {image_stem(r.image) for r in pool}
    for s in SPLITS:
        value = split.get(s)
        if isinstance(value, str):
            names = read_name_list(root / value)
            unknown_names = [n for n in names if n not in by_name and n not in base]
            if unknown_names:
                raise DataError(
                    f"{root / value}: {len(unknown_names)} name(s) match no image, e.g. "
                    f"{unknown_names[:3]}"
                )
            wanted = set(names)
            chosen = [r for r in pool if r.name in wanted or image_stem(r.image) in wanted]
            out[s].extend(chosen)
            pool = [r for r in pool if r not in set(chosen)]
    groups: dict[tuple, list[Record]] = defaultdict(list)
    for r in pool:  # fractions are of the whole pool, stratified by (domain, label)
        groups[(r.domain, r.label)].append(r)
    sizes = {key: len(members) for key, members in groups.items()}
    total = len(pool)
    for s in ("test", "val"):
        value = split.get(s)
        if value is None or isinstance(value, str):
            continue
        frac = float(value)
        if not 0.0 <= frac < 1.0:
            raise ConfigError(f"data.split.{s} must be a fraction in [0, 1), got {value}")
        if frac == 0.0 or not pool:
            continue
        chosen: list[Record] = []
        for key in sorted(groups, key=lambda k: (str(k[0]), str(k[1]))):
            members = sorted(groups[key], key=lambda r: _rank(r.name, seed))
            chosen.extend(members[: round(frac * sizes[key])])
        if not chosen:  # every group too small to round up: take the top of the pool
            chosen = sorted(pool, key=lambda r: _rank(r.name, seed))[: max(1, round(frac * total))]
        taken = set(chosen)
        out[s].extend(chosen)
        pool = [r for r in pool if r not in taken]
        groups = {k: [r for r in v if r not in taken] for k, v in groups.items()}
    if isinstance(split.get("train"), str):
        pass  # the list file defined train; unlisted images stay unused
    else:
        out["train"].extend(pool)
    return {s: sorted(v, key=lambda r: r.name) for s, v in out.items() if v}


def with_domains(
    records: Sequence[Record], table: Mapping[str, str], names: list[str]
) -> list[Record]:
    """Attach domain indices from ``{file name or stem: domain}``; new domain names are added
    to ``names`` in sorted order."""
    for domain in sorted(set(table.values()) - set(names)):
        names.append(domain)
    out = []
    for r in records:
        key = r.image.name if r.image.name in table else image_stem(r.image)
        if key not in table:
            raise DataError(f"{r.image}: no row in the domain table for this file")
        out.append(replace(r, domain=names.index(table[key])))
    return out


def relpath(path: os.PathLike | str, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)
