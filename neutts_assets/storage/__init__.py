"""One object-store interface with three backends: a local folder, GCS and S3-compatible stores.

Backends take ready-made clients, so this floor stays free of Dagster: the Dagster layer builds
the clients through dagster-gcp's GCSResource and boto3 (with botocore's retry Config).
"""

from neutts_assets.storage.store import ObjectInfo, ObjectStore, StoreCheckError, StoreError, UnsafeKeyError

__all__ = ["ObjectInfo", "ObjectStore", "StoreCheckError", "StoreError", "UnsafeKeyError"]
