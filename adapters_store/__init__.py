"""Persistence for adapter weights behind one small interface.

Backends: `SqlBlobStore` (the default: blobs in the service database) and `FilesystemStore`.
Every backend verifies a blob's sha256 on read, so corrupted weights are never served.
"""

from adapters_store.base import (
    AdapterStore,
    BlobCorruptedError,
    BlobNotFoundError,
    InvalidKeyError,
    StoredBlob,
    StoreError,
)
from adapters_store.filesystem import FilesystemStore
from adapters_store.sql import SqlBlobStore

__all__ = [
    "AdapterStore",
    "BlobCorruptedError",
    "BlobNotFoundError",
    "FilesystemStore",
    "InvalidKeyError",
    "SqlBlobStore",
    "StoreError",
    "StoredBlob",
]
