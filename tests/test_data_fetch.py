"""microfm-data fetch against a loopback HTTP server: resumable downloads, checksums, unpacking,
licence printout, trust-on-first-use checksums; and the registry's entries."""

from __future__ import annotations

import hashlib
import io
import zipfile

import pytest

from microfm.cli.data import main
from microfm.data import downloads
from microfm.data.registry import DATASETS, DatasetSource, RemoteFile
from microfm.errors import DataError
from tests.loopback import LoopbackServer as _Server


def _zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("toy/images/a.txt", "x" * 50_000)
    return buf.getvalue()


@pytest.fixture
def toy():
    data = _zip_bytes()
    notes = b"some annotations" * 1000
    registry = {
        "toy": DatasetSource(
            description="a toy dataset",
            files=(
                RemoteFile(
                    "https://example.org/x/toy.zip", "toy.zip", hashlib.sha256(data).hexdigest()
                ),
                RemoteFile("https://example.org/y/notes.json", "notes.json", None, unpack=False),
            ),
            licence="CC0 toy licence",
            citation="Toy et al.",
            root="toy",
        )
    }
    return registry, {"toy.zip": data, "notes.json": notes}


def test_interrupted_download_resumes_verifies_and_unpacks(tmp_path, toy, capsys):
    registry, files = toy
    server = _Server(files, cut=1)  # the first request is cut in the middle
    try:
        root = downloads.fetch(
            "toy", tmp_path, mirror=server.url, registry=registry, retries=3, retry_wait=0
        )
    finally:
        server.close()
    out = capsys.readouterr().out
    assert "licence: CC0 toy licence" in out and "please cite: Toy et al." in out
    assert "resuming" in out
    ranges = [r for name, r in server.requests if name == "toy.zip"]
    assert ranges[0] is None and ranges[1] == f"bytes={len(files['toy.zip']) // 2}-"
    assert root == tmp_path / "datasets" / "toy" / "toy"
    assert (root / "images" / "a.txt").read_text() == "x" * 50_000
    assert (tmp_path / "datasets" / "toy" / "toy.zip").read_bytes() == files["toy.zip"]
    assert not list((tmp_path / "datasets" / "toy").glob("*.part"))
    # no published checksum for notes.json: recorded at first download
    known = (tmp_path / "datasets" / "toy" / "checksums.json").read_text()
    assert hashlib.sha256(files["notes.json"]).hexdigest() in known
    assert "trust on first use" in out


def test_checksum_mismatch_is_an_error_and_leaves_nothing(tmp_path, toy):
    registry, files = toy
    server = _Server({**files, "toy.zip": files["toy.zip"][:-10] + b"0123456789"})
    try:
        with pytest.raises(DataError, match="checksum mismatch"):
            downloads.fetch("toy", tmp_path, mirror=server.url, registry=registry)
    finally:
        server.close()
    folder = tmp_path / "datasets" / "toy"
    assert not (folder / "toy.zip").exists() and not list(folder.glob("*.part"))


def test_server_without_ranges_restarts_and_recorded_checksum_is_enforced(tmp_path, toy):
    registry, files = toy
    server = _Server(files, cut=1, ranges=False)
    try:
        downloads.fetch("toy", tmp_path, mirror=server.url, registry=registry, retry_wait=0)
    finally:
        server.close()
    assert (tmp_path / "datasets" / "toy" / "toy.zip").read_bytes() == files["toy.zip"]
    # later downloads of notes.json are checked against the recorded checksum
    (tmp_path / "datasets" / "toy" / "notes.json").unlink()
    server = _Server({**files, "notes.json": b"tampered"})
    try:
        with pytest.raises(DataError, match="checksum mismatch"):
            downloads.fetch("toy", tmp_path, mirror=server.url, registry=registry)
    finally:
        server.close()


def test_cli_fetch_and_list(tmp_path, toy, monkeypatch, capsys):
    registry, files = toy
    monkeypatch.setattr(downloads, "DATASETS", registry)
    server = _Server(files)
    try:
        main(["fetch", "toy", "--cache-dir", str(tmp_path), "--mirror", server.url])
    finally:
        server.close()
    assert "is ready in" in capsys.readouterr().out
    main(["fetch", "--list"])
    listing = capsys.readouterr().out
    for name in ("livecell", "lucchi_pp", "drosophila_vnc", "bbbc039"):
        assert name in listing
    with pytest.raises(SystemExit) as exc:
        main(["fetch", "nope", "--cache-dir", str(tmp_path)])
    assert exc.value.code == 2


def test_registry_entries_are_complete():
    for name, source in DATASETS.items():
        assert source.licence and source.citation and source.files, name
        for f in source.files:
            assert f.url.startswith(("http://", "https://")), f.url
            assert f.sha256 is None or len(f.sha256) == 64
            assert f.checksum_source, f"{name}/{f.filename}: say where the checksum comes from"
