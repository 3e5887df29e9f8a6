"""Content-addressed blob storage over fsspec: a local folder or S3 (s3fs), by configuration alone.

Blobs are named `blobs/<sha256>.safetensors` under the store's root. `put_blob` uploads only what is
not already there intact (a merge costs the new expert's bytes, never a copy of the others), writes
through a temporary name and renames (local) or relies on S3's atomic single PUT, then reads the
stored bytes back and checks their sha256 before reporting success.

Referenced blobs that were not just written are checked by content too (`has_blob`), cheaply: the
result of hashing a stored object is remembered in `$CCOE_CACHE/blob-checks/` against the store's
own version token for it (S3 ETag, or size + mtime + inode on a filesystem), so an unchanged blob is
hashed once per machine and a same-size corruption (new token) is hashed and caught. This guards
against corruption; loading still verifies every byte against the manifest's sha256.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import re
import socket
from dataclasses import dataclass

import fsspec

from ccoe.config import StorageSpec, cache_root

_CHUNK = 8 << 20


def blob_name(sha256: str) -> str:
    return f"blobs/{sha256}.safetensors"


_BLOB_FILE = re.compile(r"([0-9a-f]{64})\.safetensors")


@dataclass(frozen=True)
class StoredBlob:
    sha256: str
    bytes: int
    modified: float  # seconds since the epoch, as the store reports it


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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class BlobStore:
    """A root on some filesystem holding `blobs/<sha256>.safetensors` (and, for folders, `ccoe.json`)."""

    def __init__(self, spec: StorageSpec | str):
        self.spec = spec if isinstance(spec, StorageSpec) else StorageSpec(uri=str(spec))
        self.fs, self.root = fsspec.core.url_to_fs(self.spec.uri.rstrip("/"), **storage_options(self.spec))
        self.root = self.root.rstrip("/")
        self.bytes_written = 0

    @property
    def is_local(self) -> bool:
        protocols = (self.fs.protocol,) if isinstance(self.fs.protocol, str) else tuple(self.fs.protocol)
        return any(p in ("file", "local") for p in protocols)

    def path(self, name: str) -> str:
        return f"{self.root}/{name}"

    def url(self, name: str) -> str:
        return f"{self.spec.uri.rstrip('/')}/{name}"

    @contextlib.contextmanager
    def _explained(self, action: str, name: str):
        """Turn a bare `Forbidden`/PermissionError from the store into one error that says where and with
        which credentials (never their values), and what to check."""
        try:
            yield
        except PermissionError as err:
            if self.is_local:
                raise PermissionError(f"cannot {action} {self.url(name)}: {err.strerror or err}") from None
            keys = (self.spec.access_key_env, self.spec.secret_key_env)
            source = (f"the environment variables {keys[0]}/{keys[1]}" if all(os.environ.get(k) for k in keys)
                      else "the default AWS credential chain (AWS_PROFILE, ~/.aws, instance role), because "
                           f"{keys[0]}/{keys[1]} are not both set")
            raise PermissionError(
                f"cannot {action} {self.url(name)}: access denied by {self.spec.endpoint_url or 'AWS S3'} "
                f"(bucket {self.root.split('/')[0]!r}, credentials from {source}). Check that the keys are "
                "right for this endpoint and allow this bucket, and that storage.endpoint_url points at your S3."
            ) from None

    def exists(self, name: str) -> bool:
        with self._explained("look up", name):
            return self.fs.exists(self.path(name))

    def size(self, name: str) -> int:
        with self._explained("stat", name):
            return int(self.fs.size(self.path(name)))

    def get(self, name: str) -> bytes:
        try:
            with self._explained("read", name):
                return self.fs.cat_file(self.path(name))
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.url(name)} does not exist") from None

    def put_file(self, name: str, data: bytes) -> None:
        """Write `name` whole or not at all: no partial object, and no temporary file left behind
        (removed on failure; ones left by a killed writer on this host are swept by the next write)."""
        path = self.path(name)
        with self._explained("write", name):
            if self.is_local:
                folder = posixpath.dirname(path)
                self.fs.makedirs(folder, exist_ok=True)
                self._sweep_stale_temporaries(folder)
                tmp = f"{folder}/.{posixpath.basename(path)}.{socket.gethostname()}.{os.getpid()}.tmp"
                try:
                    self.fs.pipe_file(tmp, data)
                    self.fs.mv(tmp, path)
                except BaseException:
                    with contextlib.suppress(OSError):
                        self.fs.rm_file(tmp)
                    raise
            else:
                self.fs.pipe_file(path, data)
        self.bytes_written += len(data)

    def _sweep_stale_temporaries(self, folder: str) -> None:
        """Remove `.NAME.<host>.<pid>.tmp` files of writers on this host whose process is gone (a host name
        may hold dots: it is matched as the whole text between the blob name and the pid)."""
        mine = re.compile(rf"\..+\.{re.escape(socket.gethostname())}\.([0-9]+)\.tmp")
        for entry in os.scandir(folder):
            match = mine.fullmatch(entry.name)
            if match and not _pid_alive(int(match.group(1))):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)

    def list_blobs(self) -> list[StoredBlob]:
        """Every `blobs/<sha256>.safetensors` in the store (temporaries and foreign files are not blobs)."""
        with self._explained("list", "blobs"):
            try:
                entries = self.fs.ls(self.path("blobs"), detail=True)
            except FileNotFoundError:
                return []
        found = []
        for entry in entries:
            match = _BLOB_FILE.fullmatch(posixpath.basename(entry["name"]))
            if match and entry.get("type", "file") == "file":
                modified = entry.get("mtime") or entry.get("LastModified") or entry.get("created")
                modified = modified.timestamp() if hasattr(modified, "timestamp") else float(modified)
                found.append(StoredBlob(match.group(1), int(entry["size"]), modified))
        return sorted(found, key=lambda b: b.sha256)

    def remove_blob(self, sha: str) -> None:
        with self._explained("delete", blob_name(sha)):
            self.fs.rm_file(self.path(blob_name(sha)))

    def put_blob(self, data: bytes) -> tuple[str, str]:
        """Store blob bytes under their sha256 unless an intact copy is there; a corrupt copy is replaced.
        Verifies what is stored. Returns (name, sha256)."""
        sha = hashlib.sha256(data).hexdigest()
        name = blob_name(sha)
        if not self.has_blob(sha, len(data)):
            self.put_file(name, data)
            stored = hashlib.sha256(self.get(name)).hexdigest()
            if stored != sha:
                raise OSError(f"blob written to {self.url(name)} reads back with sha256 {stored}, expected {sha}")
            self._remember_check(name, sha)
        return name, sha

    # -- content checks of stored blobs, cached by the store's version token ---------------------------

    def _version_token(self, name: str) -> tuple[str, int] | None:
        """(token, size): the token changes whenever the stored object does (S3's ETag, else size + mtime +
        inode). None when the object does not exist."""
        with self._explained("stat", name):
            try:
                info = self.fs.info(self.path(name))
            except FileNotFoundError:
                return None
        fields = ("size", "ETag", "etag", "mtime", "ino", "LastModified", "VersionId")
        return json.dumps({k: info[k] for k in fields if info.get(k) is not None}, sort_keys=True, default=str), int(info["size"])

    def _check_record(self, name: str):
        key = hashlib.sha256(self.url(name).encode()).hexdigest()
        return cache_root() / "blob-checks" / f"{key}.json"

    def _remember_check(self, name: str, sha: str) -> None:
        stat = self._version_token(name)
        if stat is None:
            return
        token = stat[0]
        record = self._check_record(name)
        record.parent.mkdir(parents=True, exist_ok=True)
        tmp = record.with_name(f".{record.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"token": token, "sha256": sha}))
        tmp.replace(record)

    def has_blob(self, sha: str, size: int) -> bool:
        """Whether `blobs/<sha>.safetensors` is stored with exactly these `size` bytes and this sha256.

        Hashes the stored object (streamed) only when this machine has not already verified the
        object's current version token."""
        name = blob_name(sha)
        stat = self._version_token(name)
        if stat is None or stat[1] != size:
            return False
        token = stat[0]
        record = self._check_record(name)
        with contextlib.suppress(FileNotFoundError, ValueError):
            if json.loads(record.read_text()) == {"token": token, "sha256": sha}:
                return True
        digest = hashlib.sha256()
        with self._explained("read", name), self.fs.open(self.path(name), "rb") as stream:
            while chunk := stream.read(_CHUNK):
                digest.update(chunk)
        if digest.hexdigest() != sha:
            return False
        self._remember_check(name, sha)
        return True
