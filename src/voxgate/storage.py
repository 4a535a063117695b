"""Where job audio lives: the local data dir (the default) or an S3-compatible bucket.

The jobs door puts an accepted upload here, a worker takes it back out for the decoder, and
deletion follows the job (worker finish, cancel, ``DELETE /v1/jobs/{id}``, the retention sweep).
Nothing else knows which backend is in use: both implement :class:`AudioStorage`, and
:func:`open_storage` picks one from ``VOXGATE_STORAGE__URL``.

* :class:`LocalStorage`: ``<root>/<task id>/raw.<ext>`` with root ``<data_dir>/audio`` (empty
  URL) or a ``file://`` directory (a shared volume when API and workers run on different
  machines). Uploads are staged at their final place, so putting one is a no-op: the behaviour
  from before storage backends existed, unchanged.
* :class:`S3Storage`: objects ``<prefix>/<task id>/raw.<ext>`` in a bucket of any S3-compatible
  service (AWS, MinIO, Ceph, GCS interop) through boto3 (extra ``s3``). An upload is staged on
  the API machine's disk first (its multipart body must be parsed and its audio probed before it
  is accepted: bad input never reaches the bucket), then streamed to the bucket, in parts past
  ``multipart_threshold_mb`` (memory: one part per thread in flight, never the whole file). A
  failed upload is aborted, so no partial object is left. Workers download the object to a
  temporary file in the staging dir, since decoders need to seek (MP4/M4A keep their index at
  the end), and delete it after the job; a worker's start deletes the copies a killed worker
  left (``jobs.sweep_fetched_copies``).

Errors: :class:`StorageConfigError` (a :class:`ConfigError`: missing bucket, refused
credentials; permanent) and :class:`StorageUnavailableError` (network down, 5xx, throttling;
worth a retry). Credentials never appear in messages or logs.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Protocol
from urllib.parse import unquote, urlsplit

from .config import Settings, StorageSettings
from .errors import AudioError, ConfigError, MissingExtraError, VoxgateError

__all__ = ["AudioStorage", "LocalStorage", "S3Storage", "StorageError", "StorageConfigError",
           "StorageUnavailableError", "open_storage", "FETCH_PREFIX", "SPOOL_PREFIX"]

logger = logging.getLogger(__name__)

SPOOL_PREFIX = ".upload-"  # an upload's multipart body being received (server/deps.py)
FETCH_PREFIX = ".fetch-"  # a worker's local copy of an object while it decodes it
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}")  # an object name under a task
_AUTH_CODES = frozenset({"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                         "InvalidToken", "ExpiredToken", "InvalidClientTokenId",
                         "AllAccessDisabled", "AccountProblem", "InvalidSecurity"})
_BUSY_CODES = frozenset({"SlowDown", "ServiceUnavailable", "RequestTimeout", "InternalError",
                         "RequestTimeTooSkewed", "Throttling", "ThrottlingException"})


class StorageError(VoxgateError, RuntimeError):
    """The audio storage failed in a way that is neither bad config nor an outage."""


class StorageConfigError(ConfigError, StorageError):
    """The storage refuses us: no such bucket, credentials rejected, access denied."""


class StorageUnavailableError(StorageError):
    """The storage cannot be reached or is failing (network, 5xx, throttling): retry later."""


class AudioStorage(Protocol):
    """Job audio by task id. Every method may raise :class:`StorageError` subclasses."""

    location: str  # where, for logs and errors (never credentials)
    staging_dir: Path  # local dir where uploads are received and staged before ``put_file``
    staging_is_storage: bool  # True: task dirs in ``staging_dir`` are the stored audio itself

    def check(self) -> None:
        """Raise now (start-up) if the storage is unusable: missing bucket, bad credentials."""

    def put_file(self, task_id: str, source: Path) -> None:
        """Move a staged local file into storage as ``<task id>/<source name>``."""

    def put_stream(self, task_id: str, name: str, stream: BinaryIO) -> None:
        """Store what ``stream`` yields as ``<task id>/<name>``; nothing is left if it fails."""

    def open(self, task_id: str, name: str) -> BinaryIO:
        """A binary stream reading ``<task id>/<name>`` (``AudioError`` when it is missing)."""

    def fetch(self, task_id: str) -> AbstractContextManager[Path]:
        """The task's ``raw.*`` as a local file for the decoder, for the ``with`` block."""

    def exists(self, task_id: str) -> bool:
        """Whether anything is stored for the task."""

    def delete(self, task_id: str) -> None:
        """Remove everything stored for the task (no error when nothing is)."""

    def list_tasks(self) -> Iterator[tuple[str, float]]:
        """(task id, last modified as epoch seconds) of every task with stored audio."""


def _task(task_id: str) -> str:
    """The canonical task id; anything else (a path, '..') is refused."""
    try:
        return str(uuid.UUID(task_id))
    except (ValueError, TypeError, AttributeError):
        raise StorageError(f"not a task id: {str(task_id)[:64]!r}") from None


def _name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise StorageError(f"not a stored file name: {name[:64]!r}")
    return name


class LocalStorage:
    """Task directories under one local (or shared-volume) directory."""

    staging_is_storage = True

    def __init__(self, root: Path) -> None:
        self.root = root
        self.staging_dir = root
        self.location = str(root)

    def task_dir(self, task_id: str) -> Path:
        return self.root / _task(task_id)

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageConfigError(f"cannot create the audio directory {self.root}: "
                                     f"{exc.strerror or exc}") from exc
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise StorageConfigError(f"the audio directory {self.root} is not writable")

    def put_file(self, task_id: str, source: Path) -> None:
        target = self.task_dir(task_id) / _name(source.name)
        if source.resolve() == target.resolve():
            return  # staged in place (the jobs door's uploads): nothing to move
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(source, target)

    def put_stream(self, task_id: str, name: str, stream: BinaryIO) -> None:
        directory = self.task_dir(task_id)
        directory.mkdir(parents=True, exist_ok=True)
        partial = directory / f".{_name(name)}.partial"
        try:
            with partial.open("wb") as out:
                shutil.copyfileobj(stream, out, 1 << 20)
            partial.replace(directory / name)
        finally:
            partial.unlink(missing_ok=True)

    def open(self, task_id: str, name: str) -> BinaryIO:
        path = self.task_dir(task_id) / _name(name)
        try:
            return path.open("rb")
        except FileNotFoundError:
            raise AudioError(f"audio of task {task_id} is missing from {path.parent}") from None

    @contextmanager
    def fetch(self, task_id: str) -> Iterator[Path]:
        directory = self.task_dir(task_id)
        found = sorted(directory.glob("raw.*"))
        if not found:
            raise AudioError(f"audio of task {task_id} is missing from {directory}")
        yield found[0]

    def exists(self, task_id: str) -> bool:
        directory = self.task_dir(task_id)
        return directory.is_dir() and any(directory.iterdir())

    def delete(self, task_id: str) -> None:
        shutil.rmtree(self.task_dir(task_id), ignore_errors=True)

    def list_tasks(self) -> Iterator[tuple[str, float]]:
        if not self.root.is_dir():
            return
        for entry in self.root.iterdir():
            try:
                task_id = str(uuid.UUID(entry.name))
                yield task_id, entry.stat().st_mtime
            except ValueError:
                continue  # not ours (a spool file, something an operator put there)
            except FileNotFoundError:
                continue  # removed meanwhile


def _public_endpoint(url: str) -> str:
    """The endpoint without any user:password part, for messages."""
    if not url:
        return "AWS"
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}"


class S3Storage:
    """Objects ``<prefix>/<task id>/<name>`` in one bucket of an S3-compatible service."""

    staging_is_storage = False

    def __init__(self, options: StorageSettings, data_dir: Path) -> None:
        try:
            import boto3
            from boto3.exceptions import S3UploadFailedError
            from boto3.s3.transfer import TransferConfig
            from botocore.config import Config
            from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
            from botocore.exceptions import ConnectionError as BotoConnectionError
        except ImportError as exc:
            raise MissingExtraError("S3 audio storage (VOXGATE_STORAGE__URL=s3://...)", "s3",
                                    exc) from exc
        parts = urlsplit(options.url)
        self.bucket = parts.netloc
        self.prefix = unquote(parts.path).strip("/")
        self.endpoint = _public_endpoint(options.endpoint_url)
        self.location = f"s3://{self.bucket}/{self.prefix}{'/' if self.prefix else ''} " \
                        f"({self.endpoint})"
        self.staging_dir = data_dir / "audio-staging"
        self._errors = (BotoCoreError, ClientError, S3UploadFailedError)
        self._client_error = ClientError
        self._network_errors = (BotoConnectionError, HTTPClientError)
        # third-party S3 services (GCS, older MinIO/Ceph) reject the CRC trailers boto3 sends
        # by default since 1.36; AWS itself gets them
        checksums = "when_required" if options.endpoint_url else "when_supported"
        config = Config(
            region_name=options.region or None, signature_version="s3v4",
            connect_timeout=options.timeout_s, read_timeout=options.timeout_s,
            retries={"max_attempts": options.max_attempts, "mode": "standard"},
            s3={"addressing_style": options.addressing_style},
            max_pool_connections=max(10, 2 * options.max_concurrency),
            request_checksum_calculation=checksums, response_checksum_validation=checksums)
        secret = {k: v for k, v in (
            ("aws_access_key_id", options.access_key_id.get_secret_value()),
            ("aws_secret_access_key", options.secret_access_key.get_secret_value()),
            ("aws_session_token", options.session_token.get_secret_value())) if v}
        self._client = boto3.session.Session().client(
            "s3", endpoint_url=options.endpoint_url or None,
            verify=options.ca_bundle or options.verify_tls, config=config, **secret)
        mib = 1024 * 1024
        self._transfer = TransferConfig(multipart_threshold=options.multipart_threshold_mb * mib,
                                        multipart_chunksize=options.multipart_chunk_mb * mib,
                                        max_concurrency=options.max_concurrency,
                                        use_threads=True)
        self._extra = ({"ServerSideEncryption": options.server_side_encryption}
                       if options.server_side_encryption else {})

    # -- keys and errors ---------------------------------------------------------------------

    def _task_prefix(self, task_id: str) -> str:
        return f"{self.prefix}/{_task(task_id)}/" if self.prefix else f"{_task(task_id)}/"

    def _key(self, task_id: str, name: str) -> str:
        return self._task_prefix(task_id) + _name(name)

    def _translate(self, exc: BaseException, doing: str) -> StorageError:
        """One clear storage error for what boto3 raised (credentials are never in it)."""
        cause = exc.__cause__ or exc.__context__
        if not isinstance(exc, self._client_error) and isinstance(cause, self._client_error):
            exc = cause  # upload_file wraps ClientError in S3UploadFailedError
        where = f"{self.location}"
        if isinstance(exc, self._client_error):
            error = exc.response.get("Error", {})
            code = str(error.get("Code") or "")
            http = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            if code == "NoSuchBucket":
                return StorageConfigError(f"S3 bucket {self.bucket!r} does not exist at "
                                          f"{self.endpoint} (VOXGATE_STORAGE__URL)")
            if code in _AUTH_CODES or http in (401, 403):
                return StorageConfigError(
                    f"S3 refused {doing} on {where}: {code or http} (check "
                    "VOXGATE_STORAGE__ACCESS_KEY_ID / __SECRET_ACCESS_KEY and the bucket policy)")
            if code in _BUSY_CODES or http >= 500:
                return StorageUnavailableError(f"audio storage {where} failed {doing}: "
                                               f"{code or http}; retry later")
            return StorageError(f"S3 {doing} failed on {where}: {code or http}")
        name = type(exc).__name__
        if name in ("NoCredentialsError", "PartialCredentialsError"):
            return StorageConfigError(
                f"no S3 credentials for {where}: set VOXGATE_STORAGE__ACCESS_KEY_ID and "
                "VOXGATE_STORAGE__SECRET_ACCESS_KEY or give the process AWS credentials")
        if isinstance(exc, self._network_errors):
            return StorageUnavailableError(f"audio storage {where} is unreachable ({doing}: "
                                           f"{name}); retry later")
        return StorageError(f"S3 {doing} failed on {where}: {name}: {exc}")

    @contextmanager
    def _calls(self, doing: str) -> Iterator[None]:
        try:
            yield
        except self._errors as exc:
            raise self._translate(exc, doing) from exc

    def _keys(self, prefix: str) -> Iterator[dict[str, Any]]:
        paginator = self._client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            yield from page.get("Contents", ())

    def _missing(self, exc: BaseException) -> bool:
        if not isinstance(exc, self._client_error):
            return False
        return str(exc.response.get("Error", {}).get("Code")) in ("NoSuchKey", "404")

    # -- the protocol ------------------------------------------------------------------------

    def check(self) -> None:
        """Listing the prefix needs the bucket, valid credentials and the list permission."""
        with self._calls("listing the bucket"):
            self._client.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix, MaxKeys=1)
        logger.info("job audio is stored in %s", self.location)

    def put_file(self, task_id: str, source: Path) -> None:
        key = self._key(task_id, source.name)
        with self._calls("storing an upload"):
            self._client.upload_file(str(source), self.bucket, key, ExtraArgs=self._extra,
                                     Config=self._transfer)
        source.unlink(missing_ok=True)
        if source.parent.parent == self.staging_dir:  # <staging>/<task id>/raw.<ext>
            shutil.rmtree(source.parent, ignore_errors=True)

    def put_stream(self, task_id: str, name: str, stream: BinaryIO) -> None:
        key = self._key(task_id, name)
        with self._calls("storing an upload"):
            self._client.upload_fileobj(stream, self.bucket, key, ExtraArgs=self._extra,
                                        Config=self._transfer)

    def open(self, task_id: str, name: str) -> BinaryIO:
        key = self._key(task_id, name)
        try:
            with self._calls("reading audio"):
                return self._client.get_object(Bucket=self.bucket, Key=key)["Body"]
        except StorageError as exc:
            if self._missing(exc.__cause__):
                raise AudioError(f"audio of task {task_id} is missing from "
                                 f"{self.location}") from None
            raise

    @contextmanager
    def fetch(self, task_id: str) -> Iterator[Path]:
        with self._calls("finding audio"):
            keys = [o["Key"] for o in self._keys(self._task_prefix(task_id))]
        raw = sorted(k for k in keys if k.rsplit("/", 1)[-1].startswith("raw."))
        if not raw:
            raise AudioError(f"audio of task {task_id} is missing from {self.location}")
        ext = raw[0].rsplit(".", 1)[-1]
        self.staging_dir.mkdir(parents=True, exist_ok=True)
        local = self.staging_dir / f"{FETCH_PREFIX}{_task(task_id)}-{uuid.uuid4().hex[:8]}.{ext}"
        try:
            with self._calls("reading audio"):
                self._client.download_file(self.bucket, raw[0], str(local),
                                           Config=self._transfer)
            yield local
        finally:
            local.unlink(missing_ok=True)

    def exists(self, task_id: str) -> bool:
        with self._calls("looking up audio"):
            found = self._client.list_objects_v2(Bucket=self.bucket, MaxKeys=1,
                                                 Prefix=self._task_prefix(task_id))
        return bool(found.get("KeyCount"))

    def delete(self, task_id: str) -> None:
        # one DeleteObject per key: GCS's XML API has no multi-object delete
        with self._calls("deleting audio"):
            for item in list(self._keys(self._task_prefix(task_id))):
                self._client.delete_object(Bucket=self.bucket, Key=item["Key"])

    def list_tasks(self) -> Iterator[tuple[str, float]]:
        newest: dict[str, float] = {}
        root = f"{self.prefix}/" if self.prefix else ""
        with self._calls("listing audio"):
            for item in self._keys(root):
                head = item["Key"][len(root):].split("/", 1)[0]
                try:
                    task_id = str(uuid.UUID(head))
                except ValueError:
                    continue  # not ours
                modified = item["LastModified"].timestamp()
                newest[task_id] = max(modified, newest.get(task_id, 0.0))
        yield from newest.items()


def open_storage(settings: Settings) -> AudioStorage:
    """The backend ``VOXGATE_STORAGE__URL`` names (empty: ``<data_dir>/audio``)."""
    url = settings.storage.url
    if not url:
        return LocalStorage(settings.data_dir / "audio")
    if url.startswith("file://"):
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost") or not parts.path:
            raise ConfigError(f"VOXGATE_STORAGE__URL: {url!r} is not file:///absolute/path")
        return LocalStorage(Path(unquote(parts.path)))
    return S3Storage(settings.storage, settings.data_dir)
