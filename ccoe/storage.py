"""Content-addressed blob storage over fsspec: a local folder or S3 (s3fs), by configuration alone.

Blobs are named `blobs/<sha256>.safetensors` under the store's root. `put` uploads only what is not
already there (a merge costs the new expert's bytes, never a copy of the others), writes through a
temporary name and renames (local) or relies on S3's atomic single PUT, then reads the stored bytes
back and checks their sha256 before reporting success.
"""

from __future__ import annotations

import hashlib
import os
import posixpath

import fsspec

from ccoe.config import StorageSpec


def blob_name(sha256: str) -> str:
    return f"blobs/{sha256}.safetensors"


def storage_options(spec: StorageSpec) -> dict:
    """fsspec options for the spec's protocol; S3 keys come from the environment only."""
    protocol = fsspec.core.split_protocol(spec.uri)[0]
    if protocol not in ("s3", "s3a"):
        return {}
    options: dict = {}
    key, secret = os.environ.get(spec.access_key_env), os.environ.get(spec.secret_key_env)
    if key and secret:
        options.update(key=key, secret=secret)
    client = {k: v for k, v in {"endpoint_url": spec.endpoint_url, "region_name": spec.region}.items() if v}
    if client:
        options["client_kwargs"] = client
    return options


class BlobStore:
    """A root on some filesystem holding `blobs/<sha256>.safetensors` (and, for folders, `ccoe.json`)."""

    def __init__(self, spec: StorageSpec | str):
        self.spec = spec if isinstance(spec, StorageSpec) else StorageSpec(uri=str(spec))
        self.fs, self.root = fsspec.core.url_to_fs(self.spec.uri.rstrip("/"), **storage_options(self.spec))
        self.root = self.root.rstrip("/")
        self.bytes_written = 0

    def path(self, name: str) -> str:
        return f"{self.root}/{name}"

    def url(self, name: str) -> str:
        return f"{self.spec.uri.rstrip('/')}/{name}"

    def exists(self, name: str) -> bool:
        return self.fs.exists(self.path(name))

    def size(self, name: str) -> int:
        return int(self.fs.size(self.path(name)))

    def get(self, name: str) -> bytes:
        try:
            return self.fs.cat_file(self.path(name))
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.url(name)} does not exist") from None

    def put_file(self, name: str, data: bytes) -> None:
        """Write `name` whole or not at all."""
        path = self.path(name)
        if self.fs.protocol in ("file", "local") or "file" in self.fs.protocol:
            self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
            tmp = f"{posixpath.dirname(path)}/.{posixpath.basename(path)}.{os.getpid()}.tmp"
            self.fs.pipe_file(tmp, data)
            self.fs.mv(tmp, path)
        else:
            self.fs.pipe_file(path, data)
        self.bytes_written += len(data)

    def put_blob(self, data: bytes) -> tuple[str, str]:
        """Store blob bytes under their sha256 unless present; verify what is stored. Returns (name, sha256)."""
        sha = hashlib.sha256(data).hexdigest()
        name = blob_name(sha)
        if not (self.exists(name) and self.size(name) == len(data)):
            self.put_file(name, data)
            stored = hashlib.sha256(self.get(name)).hexdigest()
            if stored != sha:
                raise OSError(f"blob written to {self.url(name)} reads back with sha256 {stored}, expected {sha}")
        return name, sha
