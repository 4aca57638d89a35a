"""One storage root per run, on any pyarrow filesystem (local folder, ``s3://``, ``gs://``).

Artifacts (``data/``, ``model/``, ``index/``, ``knn/``, ``reports/``, ``tuning/``) are folders under
the root. Each is published by writing its files first and its ``manifest.json`` last (itself via a
temp name and a move), after deleting any old manifest: a reader that finds a manifest knows every
file it lists is complete, and checks their sizes and SHA-256 digests. A crash mid-write leaves an
artifact without a manifest, which readers refuse with a message naming what is missing; a file
changed or damaged after publishing (even at the same size) is refused by its digest.
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
import shutil
import tempfile
import time
import uuid
from collections.abc import Collection, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

MANIFEST = "manifest.json"
SCHEMA_VERSION = 1


class ArtifactError(RuntimeError):
    """An artifact is missing, incomplete or does not match what the reader expects."""


class Storage:
    """A storage root: ``Storage("runs/demo")`` or ``Storage("s3://bucket/run")``."""

    def __init__(self, uri: str | Path) -> None:
        uri = str(uri)
        if not uri:
            raise ValueError("storage URI is empty")
        if "://" in uri:
            self.fs, root = pafs.FileSystem.from_uri(uri)
        else:
            self.fs, root = pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())
        self.uri = uri
        self.root = root.rstrip("/") or "/"
        self.fs.create_dir(self.root, recursive=True)

    @property
    def absolute_uri(self) -> str:
        """The URI with a local path made absolute: what Ray workers (other cwd) must be given."""
        return self.root if self.is_local and "://" not in self.uri else self.uri

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def path(self, *parts: str) -> str:
        """Absolute path of ``parts`` under the root; refuses anything that escapes it."""
        rel = posixpath.normpath(posixpath.join(*parts)) if parts else "."
        if rel.startswith("..") or posixpath.isabs(rel) or "\x00" in rel:
            raise ValueError(f"path {posixpath.join(*parts)!r} escapes the storage root")
        return self.root if rel == "." else f"{self.root}/{rel}"

    def exists(self, *parts: str) -> bool:
        return self.fs.get_file_info(self.path(*parts)).type != pafs.FileType.NotFound

    # --- bytes, JSON, Parquet ----------------------------------------------------------------

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Writes via a temp name and a move, so a reader never sees a partial file."""
        target = self.path(rel)
        self.fs.create_dir(posixpath.dirname(target), recursive=True)
        tmp = f"{posixpath.dirname(target)}/.tmp-{uuid.uuid4().hex}-{posixpath.basename(target)}"
        with self.fs.open_output_stream(tmp) as out:
            out.write(data)
        self.fs.move(tmp, target)

    def read_bytes(self, rel: str) -> bytes:
        try:
            with self.fs.open_input_stream(self.path(rel)) as src:
                return src.read()
        except FileNotFoundError as err:
            raise ArtifactError(f"{self.uri}: missing file {rel}") from err

    def write_json(self, rel: str, obj: Any) -> None:
        self.write_bytes(rel, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())

    def read_json(self, rel: str) -> Any:
        return json.loads(self.read_bytes(rel))

    def write_parquet(self, rel: str, frame: pd.DataFrame | pa.Table) -> None:
        table = (
            frame
            if isinstance(frame, pa.Table)
            else pa.Table.from_pandas(frame, preserve_index=False)
        )
        sink = io.BytesIO()
        pq.write_table(table, sink, compression="zstd")
        self.write_bytes(rel, sink.getvalue())

    def read_parquet(
        self, rel: str, columns: list[str] | None = None, manifest: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        """Reads a Parquet file; with its artifact's ``manifest``, the file is read once into
        memory and its SHA-256 is checked on those bytes before they are parsed (the check and
        the read are one download on object storage)."""
        if manifest is None:
            if not self.exists(rel):
                raise ArtifactError(f"{self.uri}: missing file {rel}")
            return pq.read_table(self.path(rel), filesystem=self.fs, columns=columns).to_pandas()
        data = self.read_checked(rel, manifest)
        return pq.read_table(pa.BufferReader(data), columns=columns).to_pandas()

    def read_checked(self, rel: str, manifest: dict[str, Any]) -> bytes:
        """A file of an artifact read once, its SHA-256 checked against the artifact's
        ``manifest`` on those bytes (one download on object storage)."""
        artifact = manifest["artifact"]
        own = posixpath.relpath(posixpath.normpath(rel), artifact)
        data, digests = self.read_bytes(rel), manifest.get("sha256", {})
        if own in digests and hashlib.sha256(data).hexdigest() != digests[own]:
            raise self._damaged(artifact, own)
        return data

    # --- artifacts ---------------------------------------------------------------------------

    def begin_artifact(self, artifact: str) -> None:
        """Marks ``artifact`` incomplete (deletes its manifest) before its files are rewritten."""
        manifest = self.path(artifact, MANIFEST)
        if self.fs.get_file_info(manifest).type != pafs.FileType.NotFound:
            self.fs.delete_file(manifest)

    def publish(self, artifact: str, manifest: dict[str, Any]) -> dict[str, Any]:
        """Writes ``artifact/manifest.json`` last, recording every file's size and SHA-256."""
        files, digests = {}, {}
        selector = pafs.FileSelector(self.path(artifact), recursive=True)
        for info in sorted(self.fs.get_file_info(selector), key=lambda i: i.path):
            rel = posixpath.relpath(info.path, self.path(artifact))
            if info.type == pafs.FileType.File and rel != MANIFEST and ".tmp-" not in rel:
                files[rel] = info.size
                digests[rel] = self._sha256(info.path)
        full = {
            "schema_version": SCHEMA_VERSION,
            "artifact": artifact,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **manifest,
            "files": files,
            "sha256": digests,
        }
        self.write_json(f"{artifact}/{MANIFEST}", full)
        return full

    def read_manifest(
        self, artifact: str, *, checksums: bool = True, **expected: Any
    ) -> dict[str, Any]:
        """Reads and checks ``artifact``'s manifest.

        Args:
            artifact: folder name under the root, e.g. ``"model"``.
            checksums: also re-read every file and compare its SHA-256 with the manifest's
                (~0.8 s per GB from the page cache here; manifests written before digests were
                recorded have sizes only).
            **expected: manifest fields that must equal the given values (e.g. ``dim=64``).

        Raises:
            ArtifactError: naming the missing manifest, a missing, truncated or damaged file, or a
                field whose value differs from the expected one.
        """
        if not self.exists(artifact, MANIFEST):
            hint = "incomplete (a crash mid-write?)" if self.exists(artifact) else "missing"
            raise ArtifactError(
                f"{self.uri}: artifact '{artifact}' is {hint}: no {artifact}/{MANIFEST}; "
                "rerun the step that writes it"
            )
        manifest = self.read_json(f"{artifact}/{MANIFEST}")
        for rel, size in manifest.get("files", {}).items():
            info = self.fs.get_file_info(self.path(artifact, rel))
            if info.type == pafs.FileType.NotFound:
                raise ArtifactError(f"{self.uri}: artifact '{artifact}' lacks file {rel}")
            if info.size != size:
                raise ArtifactError(
                    f"{self.uri}: {artifact}/{rel} has {info.size} bytes, manifest says {size}"
                )
        for rel, digest in manifest.get("sha256", {}).items() if checksums else ():
            if self._sha256(self.path(artifact, rel)) != digest:
                raise self._damaged(artifact, rel)
        for key, value in expected.items():
            if value is not None and manifest.get(key) != value:
                raise ArtifactError(
                    f"{self.uri}: artifact '{artifact}' has {key}={manifest.get(key)!r}, "
                    f"expected {value!r}"
                )
        return manifest

    def add_to_manifest(self, artifact: str, **fields: Any) -> dict[str, Any]:
        """Adds ``fields`` to a published manifest (atomically); its files are as published, so
        they are neither listed nor hashed again."""
        manifest = {**self.read_manifest(artifact, checksums=False), **fields}
        self.write_json(f"{artifact}/{MANIFEST}", manifest)
        return manifest

    def _sha256(self, path: str, copy_to: Path | None = None) -> str:
        """SHA-256 of the file at ``path``, read once in 1 MiB chunks (written to ``copy_to``
        on the way when given: one download both copies and checks a file)."""
        digest = hashlib.sha256()
        with self.fs.open_input_stream(path) as src, ExitStack() as stack:
            out = stack.enter_context(open(copy_to, "wb")) if copy_to is not None else None
            while chunk := src.read(1 << 20):
                digest.update(chunk)
                if out is not None:
                    out.write(chunk)
        return digest.hexdigest()

    def _damaged(self, artifact: str, rel: str) -> ArtifactError:
        return ArtifactError(
            f"{self.uri}: {artifact}/{rel} is damaged or was changed after it was written: its "
            "SHA-256 differs from the manifest's; rerun the step that writes it"
        )

    def is_complete(self, artifact: str, **expected: Any) -> bool:
        try:
            self.read_manifest(artifact, **expected)
        except ArtifactError:
            return False
        return True

    # --- local folders for libraries that write files themselves (ScaNN, safetensors) --------

    def upload_dir(self, local: Path, artifact: str, exclude: Collection[str] = ()) -> None:
        """Copies a local folder's files, but ``exclude``, into ``artifact/`` (then ``publish``)."""
        for path in sorted(Path(local).rglob("*")):
            if path.is_file() and path.relative_to(local).as_posix() not in exclude:
                self.write_bytes(
                    f"{artifact}/{path.relative_to(local).as_posix()}", path.read_bytes()
                )

    @contextmanager
    def checked_copy(self, artifact: str, **expected: Any) -> Iterator[tuple[Path, dict[str, Any]]]:
        """``(local folder, manifest)`` of ``artifact``, every file checked against the manifest
        (``read_manifest``'s checks; ``expected`` as there).

        Local storage yields the artifact's own folder. Object storage downloads each file once
        into a temporary folder (removed afterwards) and checks its SHA-256 on the bytes it
        downloaded: a checked load reads every file once, not twice (digest, then copy).
        """
        if self.is_local:
            yield Path(self.path(artifact)), self.read_manifest(artifact, **expected)
            return
        manifest = self.read_manifest(artifact, checksums=False, **expected)  # sizes, fields
        digests = manifest.get("sha256", {})
        tmp = Path(tempfile.mkdtemp(prefix=f"{artifact}-"))
        try:
            for rel in manifest["files"]:
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                digest = self._sha256(self.path(artifact, rel), copy_to=tmp / rel)
                if rel in digests and digest != digests[rel]:
                    raise self._damaged(artifact, rel)
            # The manifest too, as in the artifact's folder: readers of a library's own format
            # that shares it (ItemIndex.load reads index/manifest.json) find it in the copy.
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
            yield tmp, manifest
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
