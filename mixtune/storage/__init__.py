"""Storage: artifacts under one root (a local folder or any S3-compatible store).

    artifacts      ``ArtifactStore`` (Parquet tables + manifest.json per stage, fetch/put of folders),
                   ``ArtifactRef``, content ``fingerprint`` and ``code_version`` for cache keys
    code_identity  what a code version covers: a stage's import closure of mixtune modules and the
                   versions of the libraries that shape its output
    faults         ``storage_fault``: an S3 outage or a full/read-only disk under the root as one
                   ``StorageError`` naming ``storage.root`` (and ``storage.endpoint_url``)
    locks          ``artifact_lock``: one lock per artifact while it is computed (a file lock, an S3 lease)
"""
