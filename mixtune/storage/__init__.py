"""Storage: artifacts under one root (a local folder or any S3-compatible store).

    artifacts      ``ArtifactStore`` (Parquet tables + manifest.json per stage, fetch/put of folders),
                   ``ArtifactRef``, content ``fingerprint`` and ``code_version`` for cache keys
    code_identity  what a code version covers: a stage's import closure of mixtune modules and the
                   versions of the libraries that shape its output
    locks          ``artifact_lock``: one OS file lock per artifact while it is computed (local roots)
"""
