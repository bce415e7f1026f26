"""Resumable, checksum-verified downloads of public datasets into a cache.

A download goes to ``<name>.part`` first; an interrupted one resumes from where it stopped
with an HTTP ``Range`` request (servers that ignore ranges restart it from the beginning). The
finished file is verified against its SHA-256 before it takes its final name, and archives are
unpacked beside it. A file whose checksum is not known yet (see the registry) is accepted on
first download and its SHA-256 recorded in ``checksums.json``, so later downloads are verified
against it (trust on first use).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path

from microfm.data.registry import DATASETS, DatasetSource, RemoteFile
from microfm.errors import ConfigError, DataError
from microfm.utils.io import atomic_write_text

log = logging.getLogger(__name__)
CHUNK = 1 << 20


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _fetch_once(url: str, part: Path, timeout: float) -> None:
    """Append the rest of ``url`` to ``part`` (resuming with a Range request)."""
    start = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "microfm-data"})
    if start:
        request.add_header("Range", f"bytes={start}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and start:  # already complete
            return
        raise
    with response:
        status = getattr(response, "status", 200)
        mode = "ab" if (start and status == 206) else "wb"
        if start and status != 206:
            log.info("%s: the server does not resume downloads; starting again", url)
        with open(part, mode) as f:
            while True:
                block = response.read(CHUNK)
                if not block:
                    break
                f.write(block)
        expected = response.headers.get("Content-Length")
        if expected is not None:
            total = int(expected) + (start if mode == "ab" else 0)
            if part.stat().st_size < total:
                raise ConnectionError(f"connection closed at {part.stat().st_size}/{total} bytes")


def download(
    url: str,
    dest: Path,
    sha: str | None = None,
    retries: int = 3,
    timeout: float = 60.0,
    echo: Callable[[str], None] = print,
    retry_wait: float = 2.0,
) -> str:
    """Download ``url`` to ``dest`` (resumable, verified); returns the file's SHA-256.

    Raises:
        DataError: the download failed after ``retries`` attempts, or the checksum differs.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    last: Exception | None = None
    for attempt in range(1, retries + 1):
        try:
            if part.exists():
                echo(f"resuming {url} at {part.stat().st_size:,} bytes")
            else:
                echo(f"downloading {url}")
            _fetch_once(url, part, timeout)
            break
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
            last = exc
            echo(f"attempt {attempt}/{retries} failed: {exc}")
            if attempt < retries:
                time.sleep(min(retry_wait * attempt, 10.0))
    else:
        raise DataError(
            f"download of {url} failed after {retries} attempts ({last}); run the command again "
            f"to resume from {part}"
        )
    digest = sha256(part)
    if sha is not None and digest != sha.lower():
        part.unlink()
        raise DataError(
            f"{url}: checksum mismatch (sha256 {digest}, expected {sha}); the partial file was "
            "removed, run the command again"
        )
    os.replace(part, dest)
    return digest


def unpack(archive: Path, into: Path) -> None:
    """Extract a zip or tar archive into ``into`` (refusing paths that leave it)."""
    into = into.resolve()
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            for name in z.namelist():
                if not (into / name).resolve().is_relative_to(into):
                    raise DataError(f"{archive}: unsafe path {name!r} in the archive")
            z.extractall(into)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as t:
            t.extractall(into, filter="data")
    else:
        raise DataError(f"{archive}: not a zip or tar archive")


def dataset_dir(name: str, cache_dir: str | os.PathLike) -> Path:
    return Path(cache_dir).expanduser() / "datasets" / name


def fetch(
    name: str,
    cache_dir: str | os.PathLike,
    mirror: str | None = None,
    registry: dict[str, DatasetSource] | None = None,
    echo: Callable[[str], None] = print,
    retries: int = 3,
    retry_wait: float = 2.0,
) -> Path:
    """Download (or resume) every file of a registered dataset, verify and unpack it.

    Args:
        name: registry name (``microfm-data fetch --list`` shows them).
        cache_dir: cache root; files go to ``<cache_dir>/datasets/<name>/``.
        mirror: base URL replacing each file's URL up to its file name (institutional
            mirrors, tests).
        registry: the registry (default :data:`microfm.data.registry.DATASETS`).

    Returns:
        The folder to pass as ``data.root`` (the dataset's ``root`` inside the cache).
    """
    registry = DATASETS if registry is None else registry
    if name not in registry:
        raise ConfigError(f"unknown dataset {name!r}; known: {', '.join(sorted(registry))}")
    source = registry[name]
    folder = dataset_dir(name, cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    known_path = folder / "checksums.json"
    known = json.loads(known_path.read_text()) if known_path.is_file() else {}
    echo(f"{name}: {source.description}")
    echo(f"licence: {source.licence}")
    echo(f"please cite: {source.citation}")
    for remote in source.files:
        _fetch_file(remote, folder, known, mirror, echo, retries, retry_wait)
        atomic_write_text(known_path, json.dumps(known, indent=1, sort_keys=True))
    root = folder / source.root if source.root else folder
    echo(f"{name} is ready in {root}")
    if source.usage:
        echo("use it with: " + source.usage.format(root=root))
    return root


def _fetch_file(
    remote: RemoteFile,
    folder: Path,
    known: dict,
    mirror: str | None,
    echo: Callable[[str], None],
    retries: int,
    retry_wait: float,
) -> None:
    dest = folder / remote.filename
    marker = folder / f".{remote.filename}.unpacked"
    url = remote.url
    if mirror:
        url = mirror.rstrip("/") + "/" + url.rsplit("/", 1)[-1]
    expected = remote.sha256 or known.get(remote.filename)
    if dest.is_file() and (not remote.unpack or marker.is_file()):
        echo(f"{remote.filename}: already downloaded")
        return
    if not dest.is_file():
        digest = download(url, dest, expected, retries=retries, echo=echo, retry_wait=retry_wait)
        if remote.sha256 is None:
            if expected is None:
                echo(
                    f"warning: no published checksum for {remote.filename}; recorded its sha256 "
                    f"{digest} for later downloads (trust on first use)"
                )
            known[remote.filename] = digest
    if remote.unpack:
        echo(f"unpacking {remote.filename}")
        unpack(dest, folder)
        marker.touch()
