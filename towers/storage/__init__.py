"""Layer 0, storage: one storage root per run, its manifests, atomic writes and on-disk formats.

- ``root`` — :class:`~towers.storage.root.Storage` on any pyarrow filesystem (a local folder,
  ``s3://``, ``gs://``); artifacts are published with their manifest last.
- ``atomic`` — the one way a local folder is written: staged beside its target, renamed in.
- ``formats`` — the baselines' plain-arrays directory format.
"""
