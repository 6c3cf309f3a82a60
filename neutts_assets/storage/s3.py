"""An S3-compatible bucket (AWS, or the users' on-prem store through endpoint_url) as an object store."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError

from neutts_assets.storage.store import PROBE_KEY, ObjectInfo, ObjectStore, StoreCheckError, StoreError, check_key

# A condition that did not hold: the object exists (If-None-Match), changed (If-Match), or another
# conditional write to the key was in flight (409, which S3 asks the caller to retry).
_LOST_RACE_CODES = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409", "NoSuchKey", "404"}

_CREDENTIAL_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken", "AccessDenied", "403"}


class S3Store(ObjectStore):
    def __init__(self, client: Any, bucket: str, prefix: str = ""):
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix} at {self.client.meta.endpoint_url}"

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
                for obj in page.get("Contents", []):
                    yield ObjectInfo(
                        key=obj["Key"][len(self.prefix):],
                        size=obj["Size"],
                        version=obj["ETag"].strip('"'),
                        updated=obj.get("LastModified"),
                    )
        except (ClientError, BotoCoreError) as exc:
            raise StoreError(f"cannot list {self.prefix + prefix!r} in {self.describe()}: {exc}") from exc

    def read_bytes(self, key: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise FileNotFoundError(f"no object {key!r} in {self.describe()}") from None
            raise StoreError(f"cannot read {key!r} from {self.describe()}: {exc}") from exc

    def download(self, key: str, path: Path) -> int:
        try:
            self.client.download_file(self.bucket, self._key(key), str(path))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise FileNotFoundError(f"no object {key!r} in {self.describe()}") from None
            raise StoreError(f"cannot download {key!r} from {self.describe()}: {exc}") from exc
        return Path(path).stat().st_size

    def write_bytes(self, key: str, data: bytes) -> None:
        # A single PutObject is atomic in S3: readers never see a partial object.
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)
        except (ClientError, BotoCoreError) as exc:
            raise StoreError(f"cannot write {key!r} to {self.describe()}: {exc}") from exc

    def upload(self, path: Path, key: str) -> int:
        # upload_file streams large files as a multipart upload, which S3 publishes only when complete.
        full_key = self._key(key)
        try:
            self.client.upload_file(str(path), self.bucket, full_key)
        except Exception as exc:  # ClientError, BotoCoreError, or boto3's S3UploadFailedError wrapping them
            raise StoreError(f"cannot upload {key!r} to {self.describe()}: {exc}") from exc
        return Path(path).stat().st_size

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except (ClientError, BotoCoreError) as exc:
            raise StoreError(f"cannot delete {key!r} from {self.describe()}: {exc}") from exc

    def read_versioned(self, key: str) -> tuple[bytes, str] | None:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            return response["Body"].read(), response["ETag"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise StoreError(f"cannot read {key!r} from {self.describe()}: {exc}") from exc

    def _conditional_put(self, key: str, data: bytes, **condition) -> str | None:
        try:
            return self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, **condition)["ETag"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _LOST_RACE_CODES:
                return None
            raise StoreError(f"cannot write {key!r} to {self.describe()}: {exc}") from exc
        except BotoCoreError as exc:
            raise StoreError(f"cannot write {key!r} to {self.describe()}: {exc}") from exc

    def create_if_absent(self, key: str, data: bytes) -> str | None:
        return self._conditional_put(key, data, IfNoneMatch="*")

    def replace_if_version(self, key: str, data: bytes, version: str) -> str | None:
        return self._conditional_put(key, data, IfMatch=version)

    def check(self, write: bool = False) -> None:
        endpoint = self.client.meta.endpoint_url
        try:
            self.client.head_bucket(Bucket=self.bucket)
            if write:
                self.write_bytes(PROBE_KEY, b"ok")
                self.delete(PROBE_KEY)
        except EndpointConnectionError:
            raise StoreCheckError("endpoint", f"cannot connect to {endpoint}") from None
        except NoCredentialsError:
            raise StoreCheckError("credentials", "no S3 credentials found (set S3_ACCESS_KEY and S3_SECRET_KEY)") from None
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code"))
            if code in ("404", "NoSuchBucket"):
                raise StoreCheckError("bucket", f"bucket {self.bucket!r} does not exist at {endpoint}") from None
            if code in _CREDENTIAL_CODES:
                raise StoreCheckError("credentials", f"{endpoint} refused the credentials for bucket {self.bucket!r} ({code})") from None
            raise StoreCheckError("bucket", f"bucket {self.bucket!r} at {endpoint}: {code}") from None
        except StoreError as exc:
            raise StoreCheckError("permissions", f"cannot write to bucket {self.bucket!r}: {exc}") from None
        except BotoCoreError as exc:
            raise StoreCheckError("endpoint", f"{endpoint}: {type(exc).__name__}") from None
