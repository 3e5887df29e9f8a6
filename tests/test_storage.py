"""Blob store errors a user can act on, and temporaries that never outlive a write."""

import uuid

import pytest

from ccoe.config import PipelineSpec, StorageSpec
from ccoe.storage import BlobStore
from tests.s3_server import BUCKET


def test_wrong_s3_credentials_name_bucket_endpoint_and_credential_source(s3_server, monkeypatch):
    monkeypatch.setenv("CCOE_WRONG_KEY", "ccoe-test-key")
    monkeypatch.setenv("CCOE_WRONG_SECRET", "not-the-secret")
    spec = StorageSpec(uri=f"s3://{BUCKET}/{uuid.uuid4().hex}", endpoint_url=s3_server, region="us-east-1",
                       access_key_env="CCOE_WRONG_KEY", secret_key_env="CCOE_WRONG_SECRET")
    with pytest.raises(PermissionError) as err:
        BlobStore(spec).put_blob(b"not a real blob, never stored")
    message = str(err.value)
    assert f"bucket '{BUCKET}'" in message and s3_server in message
    assert "environment variables CCOE_WRONG_KEY/CCOE_WRONG_SECRET" in message and "not-the-secret" not in message


def test_a_failed_local_write_leaves_no_temporary(tmp_path, monkeypatch):
    store = BlobStore(str(tmp_path / "store"))

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(type(store.fs), "mv", disk_full)
    with pytest.raises(OSError, match="No space left"):
        store.put_blob(b"bytes")
    assert [p.name for p in (tmp_path / "store" / "blobs").iterdir()] == []


@pytest.mark.parametrize("uri", ["s3://AKIA:s3cr3t@bucket/prefix", "http://key:s3cr3t@127.0.0.1:8333"])
def test_credentials_in_storage_uris_are_refused(uri):
    field = "endpoint_url" if uri.startswith("http") else "uri"
    with pytest.raises(ValueError, match="carries credentials") as err:
        StorageSpec(**{"uri": "s3://bucket/prefix", field: uri})
    assert "s3cr3t" not in str(err.value)
    with pytest.raises(ValueError, match="carries credentials") as err:  # nested in a pipeline config, too
        PipelineSpec.model_validate({"backbone": {"source": "x"}, "experts": [], "storage": {"uri": "s3://b/p", field: uri}})
    assert "s3cr3t" not in str(err.value)
