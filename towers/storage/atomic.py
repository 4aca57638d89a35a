"""The one way a local folder is written: staged beside its target, then renamed into place.

Libraries that write files themselves (safetensors, ``np.savez``, ScaNN's ``serialize``) write
into the staged folder; only when everything is there does one ``rename`` make it the target, so
a reader never sees a half-written folder, and an interrupted write leaves the previous version
untouched. (Artifacts under a storage root, which may be object storage, are published the other
way: files first, the manifest last; see ``towers.storage.root``.)
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def staged_directory(target: str | Path) -> Iterator[Path]:
    """Yields an empty temporary folder beside ``target``; on success it replaces ``target``.

    An older ``target`` is moved aside first and deleted after the rename; on an exception the
    staged folder is removed and ``target`` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield staged
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
            target.rename(old)
        staged.rename(target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staged, ignore_errors=True)  # gone already after a successful rename
