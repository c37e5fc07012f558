"""Storage: artifacts under one root (a local folder or any S3-compatible store).

    artifacts  ``ArtifactStore`` (Parquet tables + manifest.json per stage, fetch/put of folders),
               ``ArtifactRef``, content ``fingerprint`` and ``code_version`` for cache keys
"""
