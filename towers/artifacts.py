"""The run layout: which artifact lives where under a storage root, and how each is published.

Every job writes and reads its artifacts through this module (the folder and file names are
spelled here and nowhere else).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from towers.index.base import MANIFEST
from towers.storage.root import Storage


def publish_saved_index(
    folder: str | os.PathLike[str], storage: Storage, artifact: str, **fields: Any
) -> dict[str, Any]:
    """Uploads the index saved in local ``folder`` (``ItemIndex.save``) as ``artifact`` and
    publishes it, with the other files put in ``folder`` since (known-user embeddings).

    One ``manifest.json`` serves both readers: the storage manifest carries the index's own
    fields (what ``ItemIndex.load`` reads), ``fields``, and the storage's file sizes and digests.
    """
    own = json.loads((Path(folder) / MANIFEST).read_text())
    del own["files"]  # the storage manifest lists every uploaded file
    storage.begin_artifact(artifact)
    storage.upload_dir(Path(folder), artifact, exclude={MANIFEST})
    return storage.publish(artifact, {**own, **fields})
