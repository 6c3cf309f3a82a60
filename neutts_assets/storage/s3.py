"""An S3-compatible bucket (AWS, or the users' on-prem store through endpoint_url) as an object store."""

from __future__ import annotations

import http.client
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import urllib3
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    IncompleteReadError,
    NoCredentialsError,
    ReadTimeoutError,
    ResponseStreamingError,
)

from neutts_assets.storage.retries import RetryCounter, RetrySettings, T, retry_call
from neutts_assets.storage.store import (
    PROBE_KEY,
    ObjectChanged,
    ObjectInfo,
    ObjectStore,
    StoreCheckError,
    StoreError,
    check_folder,
    check_key,
)

# A condition that did not hold: the object exists (If-None-Match), changed (If-Match), or another
# conditional write to the key was in flight (409, which S3 asks the caller to retry).
_LOST_RACE_CODES = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409", "NoSuchKey", "404"}

_CREDENTIAL_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "AccessDenied",
    "403",
}


class _BodyInterrupted(Exception):
    """The response headers arrived but the body broke off: botocore does not retry that."""


# botocore reads the body of a GetObject error response (a 404, a 503) outside its retry loop and
# without wrapping what the connection raises there: a reset inside it escapes as urllib3's own error.
_UNWRAPPED = (urllib3.exceptions.HTTPError, http.client.HTTPException)


class S3Store(ObjectStore):
    """`client` carries the retry settings (botocore Config); `settings` repeats them for the one
    spot botocore leaves alone, a GetObject body that breaks off after the headers."""

    def __init__(
        self,
        client: Any,
        bucket: str,
        prefix: str = "",
        settings: RetrySettings | None = None,
        client_factory: Callable[[], Any] | None = None,
    ):
        self.client = client
        # Makes another client like this one (reopen); without it, one is built from this client's own settings.
        self._client_factory = client_factory
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.settings = settings or RetrySettings()
        self.retry_counter = RetryCounter()
        # botocore retries inside one API call; these hooks see each attempt's outcome and each retry.
        events = client.meta.events
        events.register("response-received.s3", self._note_attempt, unique_id=f"neutts-note-{id(self)}")
        events.register("request-created.s3", self._count_retry, unique_id=f"neutts-count-{id(self)}")

    def _note_attempt(self, context=None, exception=None, response_dict=None, parsed_response=None, **_) -> None:
        if context is None:
            return
        reason = None
        if exception is not None:
            reason = type(exception).__name__
        elif response_dict is not None and response_dict.get("status_code", 200) >= 400:
            code = (parsed_response or {}).get("Error", {}).get("Code")
            reason = f"{response_dict['status_code']} {code}" if code else str(response_dict["status_code"])
        context["neutts_last_failure"] = reason

    def _count_retry(self, request=None, operation_name: str = "?", **_) -> None:
        context = getattr(request, "context", None) or {}
        if context.get("retries", {}).get("attempt", 1) > 1:
            self.retry_counter.add(operation_name, context.get("neutts_last_failure") or "unknown")

    def reopen(self) -> S3Store:
        return type(self)(
            self._client_factory() if self._client_factory else _client_like(self.client),
            self.bucket,
            self.prefix,
            self.settings,
            self._client_factory,
        )

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
                        key=obj["Key"][len(self.prefix) :],
                        size=obj["Size"],
                        version=obj["ETag"].strip('"'),
                        updated=obj.get("LastModified"),
                    )
        except (ClientError, BotoCoreError) as exc:
            raise StoreError(f"cannot list {self.prefix + prefix!r} in {self.describe()}: {exc}") from exc

    def list_folders(self, prefix: str = "") -> list[str]:
        full = self.prefix + check_folder(prefix)
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            pages = paginator.paginate(Bucket=self.bucket, Prefix=full, Delimiter="/")
            return sorted(p["Prefix"][len(full) : -1] for page in pages for p in page.get("CommonPrefixes", []))
        except (ClientError, BotoCoreError) as exc:
            raise StoreError(f"cannot list the folders under {full!r} in {self.describe()}: {exc}") from exc

    def _get(self, key: str, consume: Callable[[dict], T], **params) -> T:
        """One GetObject, its response handed to `consume`; a body broken off (or an error response
        cut off) runs the whole call again, counted: botocore retries neither."""

        def get() -> T:
            try:
                response = self.client.get_object(Bucket=self.bucket, Key=self._key(key), **params)
            except _UNWRAPPED as exc:
                raise _BodyInterrupted(f"{type(exc).__name__} in the error response: {exc}") from exc
            try:
                return consume(response)
            except (IncompleteReadError, ResponseStreamingError, ReadTimeoutError) as exc:
                raise _BodyInterrupted(f"{type(exc).__name__}: {exc}") from exc

        return retry_call(get, (_BodyInterrupted,), self.settings, self.retry_counter, "GetObject body")

    def read_bytes(self, key: str) -> bytes:
        got = self.read_versioned(key)
        if got is None:
            raise FileNotFoundError(f"no object {key!r} in {self.describe()}")
        return got[0]

    def download(self, key: str, path: Path, version: str | None = None) -> int:
        if version is not None:
            return self._download_pinned(key, path, version)
        try:
            # s3transfer retries a body that breaks off by itself (not counted here); botocore the requests.
            self.client.download_file(
                self.bucket,
                self._key(key),
                str(path),
                Config=TransferConfig(num_download_attempts=self.settings.max_attempts),
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise FileNotFoundError(f"no object {key!r} in {self.describe()}") from None
            raise StoreError(f"cannot download {key!r} from {self.describe()}: {exc}") from exc
        except Exception as exc:  # BotoCoreError, or s3transfer's wrappers of it
            raise StoreError(f"cannot download {key!r} from {self.describe()}: {exc}") from exc
        return Path(path).stat().st_size

    def _download_pinned(self, key: str, path: Path, version: str) -> int:
        # s3transfer takes no IfMatch, so one conditional GetObject streams the file; a body broken
        # off starts the file again, through the same counted retry as read_bytes.
        def to_file(response: dict) -> int:
            with open(path, "wb") as f:
                for chunk in response["Body"].iter_chunks(1 << 20):
                    f.write(chunk)
            return Path(path).stat().st_size

        try:
            return self._get(key, to_file, IfMatch=f'"{version}"')
        except ClientError as exc:
            Path(path).unlink(missing_ok=True)
            code = exc.response.get("Error", {}).get("Code")
            if code in ("NoSuchKey", "404"):
                raise FileNotFoundError(f"no object {key!r} in {self.describe()}") from None
            if code in ("PreconditionFailed", "412"):
                raise ObjectChanged(
                    f"{key!r} in {self.describe()} changed since it was listed (ETag {version})"
                ) from None
            raise StoreError(f"cannot download {key!r} from {self.describe()}: {exc}") from exc
        except (BotoCoreError, _BodyInterrupted, OSError) as exc:
            Path(path).unlink(missing_ok=True)
            raise StoreError(f"cannot download {key!r} from {self.describe()}: {exc}") from exc

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

    def remove_orphan_temporaries(self, prefix: str = "") -> int:
        """Aborts multipart uploads never completed (a writer killed mid-upload): S3 keeps their
        parts, unlisted but stored, until aborted. Only under a given prefix (a channel's shard
        folder, whose one writer is the caller: one run per channel at a time); store-wide it
        aborts nothing, as any upload there may be another channel's in progress. A bucket
        lifecycle rule (AbortIncompleteMultipartUpload) sweeps what no rerun comes back for."""
        if not prefix:
            return 0
        aborted = 0
        try:
            for page in self.client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=self.prefix + prefix
            ):
                for upload in page.get("Uploads", []):
                    self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                    aborted += 1
        except (ClientError, BotoCoreError) as exc:
            raise StoreError(f"cannot abort unfinished uploads under {prefix!r} in {self.describe()}: {exc}") from exc
        return aborted

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except (ClientError, BotoCoreError) as exc:
            raise StoreError(f"cannot delete {key!r} from {self.describe()}: {exc}") from exc

    def read_versioned(self, key: str) -> tuple[bytes, str] | None:
        try:
            return self._get(key, lambda response: (response["Body"].read(), response["ETag"]))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise StoreError(f"cannot read {key!r} from {self.describe()}: {exc}") from exc
        except (BotoCoreError, _BodyInterrupted) as exc:
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
            raise StoreCheckError(
                "credentials", "no S3 credentials found (set S3_ACCESS_KEY and S3_SECRET_KEY)"
            ) from None
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code"))
            if code in ("404", "NoSuchBucket"):
                raise StoreCheckError("bucket", f"bucket {self.bucket!r} does not exist at {endpoint}") from None
            if code in _CREDENTIAL_CODES:
                raise StoreCheckError(
                    "credentials", f"{endpoint} refused the credentials for bucket {self.bucket!r} ({code})"
                ) from None
            raise StoreCheckError("bucket", f"bucket {self.bucket!r} at {endpoint}: {code}") from None
        except StoreError as exc:
            raise StoreCheckError("permissions", f"cannot write to bucket {self.bucket!r}: {exc}") from None
        except BotoCoreError as exc:
            raise StoreCheckError("endpoint", f"{endpoint}: {type(exc).__name__}") from None


def _client_like(client: Any) -> Any:
    """A new boto3 S3 client with the endpoint, region, configuration (retries, timeouts), TLS check
    and credentials of `client`, and no connection shared with it."""
    import boto3

    creds = client._request_signer._credentials
    frozen = creds.get_frozen_credentials() if creds is not None else None
    return boto3.session.Session().client(
        "s3",
        endpoint_url=client.meta.endpoint_url,
        region_name=client.meta.region_name,
        config=client.meta.config,
        verify=client._endpoint.http_session._verify,
        aws_access_key_id=frozen.access_key if frozen else None,
        aws_secret_access_key=frozen.secret_key if frozen else None,
        aws_session_token=frozen.token if frozen else None,
    )
