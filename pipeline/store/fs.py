"""Output roots on object stores: ``s3://bucket/prefix``, ``gs://bucket/prefix``, ``file:///abs``.

The layer under ``remote.RemoteRoot``: an :class:`ObjectStore` over pyarrow's filesystem
layer, with a small set of operations: write an object, list a folder, read an
object's last bytes or its Parquet schema, delete, move (copy + delete), small JSON, and
modification times::

    bucket = ObjectStore.open("s3://bucket/docroute?endpoint_override=127.0.0.1:9000&scheme=http")
    bucket.check()                        # bucket reachable, credentials present, or StoreError
    bucket.put_table("ledger/r1/part-00000001-ab12cd34.parquet", table)
    [info.path for info in bucket.list_files("ledger")]

An object PUT is atomic (the object is whole or absent), so parts are written straight
under their final name; ``file://`` roots, which are plain folders, write a hidden temp
name and rename it. Credentials come from the environment (``AWS_ACCESS_KEY_ID`` …,
``GOOGLE_APPLICATION_CREDENTIALS``), never from the URI: :class:`RootURI`, the printable
form, drops query parameters that look like secrets.

Journals and run locks need ``O_APPEND`` and ``flock``, which object stores lack: a remote
root keeps them in a local state folder (:func:`state_dir`), so only a run on the same
machine can recover a dead run's journal.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Self
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .catalog import StoreError

#: URI schemes an output root may use (``gcs`` is pyarrow's alias of ``gs``).
SCHEMES = ("s3", "gs", "gcs", "file")
_SECRET_PARAM = re.compile(r"key|secret|token|password|credential|signature|session", re.I)
_UPLOAD_BLOCK = 8 * 1024 * 1024
#: Environment variables and files from which the AWS SDK takes credentials.
_AWS_ENV = (
    "AWS_PROFILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
)


class RemoteRootError(StoreError):
    """The root URI is unusable (scheme, bucket, credentials); the message says why."""


def is_uri(root: object) -> bool:
    """Whether ``root`` names an object-store root (``scheme://…``) rather than a folder."""
    return isinstance(root, str) and "://" in root


def secret_params(uri: str) -> list[str]:
    """Names of query parameters of ``uri`` that look like credentials.

    >>> secret_params("s3://b/p?region=eu-west-1&access_key=AKIA&secret_key=x")
    ['access_key', 'secret_key']
    """
    return [k for k, _ in parse_qsl(urlsplit(uri).query) if _SECRET_PARAM.search(k)]


class RootURI(str):
    """A remote root as people see it: the URI without secret-looking query parameters.

    >>> str(RootURI.of("s3://b/p?scheme=http&secret_key=hunter2"))
    's3://b/p?scheme=http'
    >>> RootURI.of("s3://b/p?scheme=http") / "ledger"
    's3://b/p/ledger?scheme=http'
    """

    @classmethod
    def of(cls, uri: str) -> RootURI:
        parts = urlsplit(uri)
        pairs = [p for p in parts.query.split("&") if p]
        query = "&".join(p for p in pairs if not _SECRET_PARAM.search(p.partition("=")[0]))
        netloc = parts.netloc.rpartition("@")[2]  # never user:password@
        return cls(urlunsplit((parts.scheme, netloc, parts.path, query, "")))

    def __truediv__(self, name: str) -> RootURI:
        base, sep, query = self.partition("?")
        return RootURI(f"{base.rstrip('/')}/{name}{sep}{query}")

    @property
    def without_query(self) -> str:
        return self.partition("?")[0]


def state_dir(uri: str) -> Path:
    """The local folder holding a remote root's journals and locks.

    ``$DOCROUTE_STATE_DIR/<hash>``, else ``~/.local/state/docroute/<hash>``, where the hash
    is the root URI's (without query) SHA-256, first 16 hex digits.
    """
    digest = hashlib.sha256(RootURI.of(uri).without_query.encode()).hexdigest()[:16]
    base = os.environ.get("DOCROUTE_STATE_DIR") or Path.home() / ".local/state/docroute"
    return Path(base).expanduser() / digest


@dataclass(slots=True)
class ObjectStore:
    """An output root behind ``pyarrow.fs``; object names are relative to ``base``."""

    uri: RootURI
    fs: pafs.FileSystem
    base: str
    raw_uri: str

    @classmethod
    def open(cls, uri: str) -> Self:
        shown = RootURI.of(uri)
        scheme = urlsplit(uri).scheme.lower()
        if scheme not in SCHEMES:
            raise RemoteRootError(
                f"output root {shown}: unsupported scheme {scheme!r}; expected a local folder "
                f"or a URI starting with one of {', '.join(s + '://' for s in SCHEMES)}"
            )
        try:
            fs, base = pafs.FileSystem.from_uri(uri)
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise RemoteRootError(f"output root {shown} is not a usable URI: {exc}") from None
        return cls(uri=shown, fs=fs, base=base.rstrip("/"), raw_uri=uri)

    @property
    def atomic_put(self) -> bool:
        """Whether a write is whole-or-absent by itself (object stores, not plain folders)."""
        return not isinstance(self.fs, pafs.LocalFileSystem)

    @property
    def state_dir(self) -> Path:
        return state_dir(self.raw_uri)

    def check(self) -> None:
        """Raise ``RemoteRootError`` unless credentials are configured and the bucket exists."""
        if isinstance(self.fs, pafs.S3FileSystem) and not _aws_credentials_configured():
            raise RemoteRootError(
                f"output root {self.uri}: no S3 credentials; expected AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, a shared credentials file, web "
                "identity; AWS_EC2_METADATA_DISABLED=false to use the instance role)"
            )
        bucket = self.base.split("/", 1)[0]
        try:
            info = self.fs.get_file_info(bucket if self.atomic_put else self.base)
        except (pa.ArrowException, OSError) as exc:
            raise RemoteRootError(f"output root {self.uri} cannot be reached: {exc}") from None
        if self.atomic_put and info.type != pafs.FileType.Directory:
            raise RemoteRootError(
                f"output root {self.uri}: bucket {bucket!r} does not exist or is not visible "
                "with these credentials; expected an existing bucket (create it first)"
            )

    # -- names ----------------------------------------------------------------------------

    def path(self, rel: str) -> str:
        return f"{self.base}/{rel}" if rel else self.base

    def rel(self, path: str) -> str:
        return path[len(self.base) + 1 :]

    # -- reading --------------------------------------------------------------------------

    def list_files(self, rel: str, *, recursive: bool = True) -> list[pafs.FileInfo]:
        """The files (not folders) under ``rel``, from one listing; none if it is missing."""
        selector = pafs.FileSelector(self.path(rel), recursive=recursive, allow_not_found=True)
        return [i for i in self.fs.get_file_info(selector) if i.type == pafs.FileType.File]

    def list_dirs(self, rel: str) -> list[str]:
        selector = pafs.FileSelector(self.path(rel), recursive=False, allow_not_found=True)
        infos = self.fs.get_file_info(selector)
        return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)

    def info(self, rel: str) -> pafs.FileInfo:
        return self.fs.get_file_info(self.path(rel))

    def exists(self, rel: str) -> bool:
        return self.info(rel).type != pafs.FileType.NotFound

    def tail(self, rel: str, size: int, n: int) -> bytes:
        with self.fs.open_input_file(self.path(rel)) as fh:
            return bytes(fh.read_at(n, size - n))

    def read_schema(self, rel: str) -> pa.Schema:
        return pq.read_schema(self.path(rel), filesystem=self.fs)

    def read_text(self, rel: str) -> str | None:
        try:
            with self.fs.open_input_stream(self.path(rel)) as fh:
                return bytes(fh.read()).decode("utf-8")
        except FileNotFoundError:
            return None

    # -- writing --------------------------------------------------------------------------

    def write_bytes(self, rel: str, data: bytes) -> None:
        with self._writing(rel) as out:
            out.write(data)

    def write_text(self, rel: str, text: str) -> None:
        self.write_bytes(rel, text.encode("utf-8"))

    def put_table(self, rel: str, table: pa.Table) -> None:
        """Write ``table`` as a Parquet object: built in memory, then one upload."""
        sink = io.BytesIO()
        pq.write_table(table, sink, compression="zstd")
        self.write_bytes(rel, sink.getvalue())

    def upload(self, rel: str, source: IO[bytes]) -> None:
        """Copy a local file's content to ``rel`` (the object appears when it is complete)."""
        source.seek(0)
        with self._writing(rel) as out:
            while block := source.read(_UPLOAD_BLOCK):
                out.write(block)

    @contextmanager
    def _writing(self, rel: str) -> Iterator[Any]:
        final = self.path(rel)
        parent, _, name = final.rpartition("/")
        if self.atomic_put:
            with self.fs.open_output_stream(final) as out:
                yield out
            return
        self.fs.create_dir(parent, recursive=True)
        tmp = f"{parent}/.{name}.{uuid.uuid4().hex[:8]}.tmp"  # a plain folder: rename in
        try:
            with self.fs.open_output_stream(tmp) as out:
                yield out
            self.fs.move(tmp, final)
        except BaseException:
            if self.fs.get_file_info(tmp).type != pafs.FileType.NotFound:
                self.fs.delete_file(tmp)
            raise

    def delete(self, rel: str) -> bool:
        """Delete ``rel``; ``False`` if it was already gone."""
        try:
            self.fs.delete_file(self.path(rel))
        except FileNotFoundError:
            return False
        return True

    def move(self, src: str, dst: str) -> None:
        """Copy ``src`` to ``dst``, then delete ``src`` (object stores have no rename)."""
        if not self.atomic_put:
            self.fs.create_dir(self.path(dst).rpartition("/")[0], recursive=True)
        self.fs.copy_file(self.path(src), self.path(dst))
        self.fs.delete_file(self.path(src))


def spool() -> IO[bytes]:
    """A local scratch file for an object built in pieces (a merged part) before upload."""
    return tempfile.TemporaryFile()


def _aws_credentials_configured() -> bool:
    env = os.environ
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        return True
    if any(env.get(name) for name in _AWS_ENV):
        return True
    if env.get("AWS_EC2_METADATA_DISABLED", "").lower() == "false":
        return True  # said explicitly: the instance role
    files = [env.get("AWS_SHARED_CREDENTIALS_FILE"), env.get("AWS_CONFIG_FILE")]
    files += [str(Path.home() / ".aws/credentials"), str(Path.home() / ".aws/config")]
    return any(f and Path(f).expanduser().is_file() for f in files)
