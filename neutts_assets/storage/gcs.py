"""A Google Cloud Storage bucket (the users' source bucket) as an object store."""

from __future__ import annotations

import http.client
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import requests
import urllib3
from google.api_core import exceptions as gexc
from google.api_core.retry import Retry
from google.auth import exceptions as auth_exc
from google.cloud.storage.exceptions import DataCorruption, InvalidResponse
from google.cloud.storage.retry import DEFAULT_RETRY

from neutts_assets.storage.retries import RetryCounter, RetrySettings
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

# requests is what google-cloud-storage talks through; its connection errors name the endpoint
_ConnectionError = requests.exceptions.ConnectionError
# What a call can raise once its retries are spent: an API error, or the transport's own.
_FAILED = (
    gexc.GoogleAPIError,
    requests.exceptions.RequestException,
    ConnectionError,
    http.client.HTTPException,
    urllib3.exceptions.HTTPError,
    InvalidResponse,
    DataCorruption,
)
# The library's own list of retryable errors (429, 5xx, resets, timeouts); DEFAULT_RETRY holds it.
_RETRYABLE = DEFAULT_RETRY._predicate


def _reason(exc: BaseException) -> str:
    if isinstance(exc, gexc.GoogleAPICallError) and exc.code:
        return f"{int(exc.code)} {type(exc).__name__}"
    if isinstance(exc, InvalidResponse):
        return f"{exc.response.status_code} InvalidResponse"
    return type(exc).__name__


# A resumable upload's session URL lets anyone holding it write that object without credentials,
# and transport errors quote the URL: such values are cut from our messages (and the original
# exception, which quotes it too, is not chained).
_SESSION_SECRETS = re.compile(r"((?:upload_id|uploadId|X-Goog-Signature|access_token)=)[^&\s'\"]+")


def _store_error(what: str, exc: BaseException) -> StoreError:
    text = str(exc)
    clean = _SESSION_SECRETS.sub(r"\1<redacted>", text)
    err = StoreError(f"{what}: {clean}")
    err.__cause__ = exc if clean == text else None
    err.__suppress_context__ = True
    return err


class GCSStore(ObjectStore):
    """Every call passes `retry=` and `timeout=` explicitly: uploads are not retried by default, and
    ours may be (the same key gets the same bytes)."""

    def __init__(
        self,
        client: Any,
        bucket: str,
        prefix: str = "",
        settings: RetrySettings | None = None,
        client_factory: Callable[[], Any] | None = None,
    ):
        self.client = client
        self._client_factory = client_factory  # makes another client like this one (reopen)
        self.bucket_name = bucket
        self.bucket = client.bucket(bucket)
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.settings = settings or RetrySettings()
        self.retry_counter = RetryCounter()
        self._timeout = (self.settings.connect_timeout_s, self.settings.read_timeout_s)

    def _retry(self, operation: str) -> Retry:
        """google-api-core's Retry with our backoff and deadline, which also stops after max_attempts
        and counts each retry."""
        s, attempts = self.settings, [1]

        def predicate(exc: BaseException) -> bool:
            return _RETRYABLE(exc) and attempts[0] < s.max_attempts

        def on_error(exc: BaseException) -> None:  # called only when a retry follows
            attempts[0] += 1
            self.retry_counter.add(operation, _reason(exc))

        return Retry(
            predicate=predicate,
            initial=s.initial_backoff_s,
            maximum=s.max_backoff_s,
            multiplier=2.0,
            timeout=s.deadline_s,
            on_error=on_error,
        )

    def _calls(self, operation: str) -> dict:
        return {"retry": self._retry(operation), "timeout": self._timeout}

    def reopen(self) -> GCSStore:
        if self._client_factory:
            client = self._client_factory()
        else:  # the same project, credentials and endpoint (STORAGE_EMULATOR_HOST is read again), a new session
            client = type(self.client)(
                project=self.client.project,
                credentials=self.client._credentials,
                client_options={"api_endpoint": self.client._connection.API_BASE_URL},
            )
        return type(self)(client, self.bucket_name, self.prefix.rstrip("/"), self.settings, self._client_factory)

    def describe(self) -> str:
        return f"gs://{self.bucket_name}/{self.prefix}"

    def _blob(self, key: str):
        return self.bucket.blob(self.prefix + check_key(key))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        try:
            for blob in self.client.list_blobs(self.bucket_name, prefix=self.prefix + prefix, **self._calls("list")):
                yield ObjectInfo(
                    key=blob.name[len(self.prefix) :],
                    size=int(blob.size or 0),
                    version=str(blob.generation),
                    updated=blob.updated,
                )
        except _FAILED as exc:
            raise _store_error(f"cannot list {self.prefix + prefix!r} in {self.describe()}", exc) from exc

    def list_folders(self, prefix: str = "") -> list[str]:
        full = self.prefix + check_folder(prefix)
        try:
            blobs = self.client.list_blobs(self.bucket_name, prefix=full, delimiter="/", **self._calls("list"))
            for _ in blobs.pages:  # the iterator gathers each page's prefixes as it is read
                pass
            return sorted(p[len(full) : -1] for p in blobs.prefixes)
        except _FAILED as exc:
            raise _store_error(f"cannot list the folders under {full!r} in {self.describe()}", exc) from exc

    def read_bytes(self, key: str) -> bytes:
        try:
            return self._blob(key).download_as_bytes(**self._calls("download"))
        except gexc.NotFound:
            raise FileNotFoundError(f"no object {key!r} in {self.describe()}") from None
        except _FAILED as exc:
            raise _store_error(f"cannot read {key!r} from {self.describe()}", exc) from exc

    def download(self, key: str, path: Path, version: str | None = None) -> int:
        pin = {"if_generation_match": int(version)} if version is not None else {}
        blob = self._blob(key)
        try:
            blob.download_to_filename(str(path), **pin, **self._calls("download"))
            # The response names the generation it served: checked too, for servers (the emulator)
            # that ignore the precondition on reads.
            if version is not None and blob.generation is not None and str(blob.generation) != version:
                raise gexc.PreconditionFailed(f"served generation {blob.generation}")
        except gexc.NotFound:
            Path(path).unlink(missing_ok=True)
            raise FileNotFoundError(f"no object {key!r} in {self.describe()}") from None
        except gexc.PreconditionFailed:
            Path(path).unlink(missing_ok=True)
            raise ObjectChanged(
                f"{key!r} in {self.describe()} changed since it was listed (generation {version})"
            ) from None
        except _FAILED as exc:
            raise _store_error(f"cannot download {key!r} from {self.describe()}", exc) from exc
        return Path(path).stat().st_size

    def write_bytes(self, key: str, data: bytes) -> None:
        # A GCS upload becomes visible only when complete, so a killed writer leaves no partial object.
        try:
            self._blob(key).upload_from_string(data, **self._calls("upload"))
        except _FAILED as exc:
            raise _store_error(f"cannot write {key!r} to {self.describe()}", exc) from exc

    def upload(self, path: Path, key: str) -> int:
        # Large files go as a resumable upload in chunks; the object appears only when complete.
        try:
            self._blob(key).upload_from_filename(str(path), **self._calls("upload"))
        except _FAILED as exc:
            raise _store_error(f"cannot upload {key!r} to {self.describe()}", exc) from exc
        return Path(path).stat().st_size

    def delete(self, key: str) -> None:
        try:
            self._blob(key).delete(**self._calls("delete"))
        except gexc.NotFound:
            pass
        except _FAILED as exc:
            raise _store_error(f"cannot delete {key!r} from {self.describe()}", exc) from exc

    def read_versioned(self, key: str) -> tuple[bytes, str] | None:
        try:
            blob = self.bucket.get_blob(self.prefix + check_key(key), **self._calls("read"))
            if blob is None:
                return None
            # Pinned to the generation just read, so the bytes and the version belong together.
            return blob.download_as_bytes(if_generation_match=blob.generation, **self._calls("download")), str(
                blob.generation
            )
        except (gexc.NotFound, gexc.PreconditionFailed):
            return None
        except _FAILED as exc:
            raise _store_error(f"cannot read {key!r} from {self.describe()}", exc) from exc

    def _conditional_upload(self, key: str, data: bytes, generation: int) -> str | None:
        blob = self._blob(key)
        try:
            # if_generation_match=0: only if absent. A conditional upload is safe to retry: a repeat of
            # one that landed fails its precondition, and the lease reads back whose write is there.
            blob.upload_from_string(data, if_generation_match=generation, **self._calls("upload"))
            return str(blob.generation)
        except (gexc.PreconditionFailed, gexc.NotFound):
            return None
        except _FAILED as exc:
            raise _store_error(f"cannot write {key!r} to {self.describe()}", exc) from exc

    def create_if_absent(self, key: str, data: bytes) -> str | None:
        return self._conditional_upload(key, data, 0)

    def replace_if_version(self, key: str, data: bytes, version: str) -> str | None:
        return self._conditional_upload(key, data, int(version))

    def check(self, write: bool = False) -> None:
        endpoint = getattr(self.client, "_connection", None)
        endpoint = getattr(endpoint, "API_BASE_URL", "the GCS endpoint")
        try:
            # Listing needs only storage.objects.list, which a reader has; bucket.exists() would need
            # storage.buckets.get, which least-privilege service accounts lack.
            next(
                iter(
                    self.client.list_blobs(self.bucket_name, prefix=self.prefix, max_results=1, **self._calls("list"))
                ),
                None,
            )
            if write:
                self.write_bytes(PROBE_KEY, b"ok")
                self.delete(PROBE_KEY)
        except gexc.NotFound:
            raise StoreCheckError("bucket", f"bucket {self.bucket_name!r} does not exist at {endpoint}") from None
        except (gexc.Unauthorized, gexc.Forbidden, auth_exc.DefaultCredentialsError, auth_exc.RefreshError) as exc:
            raise StoreCheckError(
                "credentials", f"{endpoint} refused access to bucket {self.bucket_name!r}: {type(exc).__name__}"
            ) from None
        except _ConnectionError:
            raise StoreCheckError("endpoint", f"cannot connect to {endpoint}") from None
        except StoreError as exc:
            raise StoreCheckError("permissions", f"cannot write to bucket {self.bucket_name!r}: {exc}") from None
