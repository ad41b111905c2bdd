"""The dataset store: one directory or fsspec URL holding Zarr pixels and Parquet tables.

Layout (documented for users in the README, section "The store")::

    STORE/
      manifest.json            schema version, package version, window grid, synth settings, runs
      images.parquet           one row per image              (schema.IMAGES)
      windows.parquet          one row per window, derived     (schema.WINDOWS)
      blurred/<H>x<W>          zarr v3 (n, H, W) float32, one chunk per image
      sharp/<H>x<W>            zarr v3 (n, H, W) float32, one chunk per sharp image (shared by its blurs)
      kernels                  zarr v3 (n, K, K) float32, one chunk per kernel, centred, sum 1
      labels/estimator=<id>/   Parquet shards of labels      (schema.LABELS)

Images of different sizes go to different ``blurred/<H>x<W>`` arrays; the images
table says which array and row hold each image.  Every table and the manifest
are written to a temporary name and renamed into place; pixel chunks are owned
by exactly one writer.

Writers take a lock (:meth:`Store.lock`): one ``synth``/``ingest`` at a time per store
(``STORE/.lock``) and one ``label`` at a time per estimator (``STORE/.lock-label-<id>``).
On a filesystem (local, NFS) the lock is ``fcntl.flock`` on that file, which the kernel
releases when its process dies, even by SIGKILL; on an object store (S3, GCS ...) it is a
lease object ``STORE/.lock*.json`` with owner, host and expiry, created conditionally
where the store supports it and renewed while held; an expired lease is taken over.
The lock files are removed on release.

``memory://`` URLs work through the Python API, but such a store lives only inside one
process: the command line refuses them (:func:`persistent_store`).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import io
import json
import logging
import os
import posixpath
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from functools import cached_property
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import schema
from .files import InputError

__all__ = ["MANIFEST", "NewImages", "Store", "StoreBusy", "is_no_space", "persistent_store"]

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
#: names of lock files and leases start with this; they are not part of the store's data
LOCK_PREFIX = ".lock"
#: a lease on an object store lasts this long unless its holder renews it (every third of it)
LEASE_SECONDS = 60.0
#: the window grid a new store gets when none is asked for (the paper's)
DEFAULT_WINDOW, DEFAULT_STRIDE = 228, 20


def kernel_capacity(window: int) -> int:
    """Side of the stored kernels array for windows of ``window`` px: the largest odd kernel a window holds.

    >>> kernel_capacity(228), kernel_capacity(101)
    (227, 101)
    """
    return window - 1 + window % 2


class StoreBusy(InputError):
    """Another writer holds the lock this run needs; ``holder`` says who (pid, host, since, command).

    >>> busy = StoreBusy("s3://bucket/ds", {"pid": 12, "host": "node1", "since": 86400, "command": "synth"})
    >>> print(busy)  # doctest: +ELLIPSIS
    s3://bucket/ds is being written by pid 12/node1 since 1970-01-02 00:00:00 UTC (synth) (pass wait=True ...)
    >>> isinstance(busy, InputError), busy.holder["pid"]
    (True, 12)
    """

    def __init__(self, url: str, holder: dict[str, Any]) -> None:
        self.url, self.holder = url, holder
        super().__init__(f"{url} is being written by {describe_holder(holder)} (pass wait=True to wait for it)")


def describe_holder(holder: dict[str, Any]) -> str:
    """Who holds a lock, for messages: ``pid P/host since <UTC time> (command)``.

    >>> describe_holder({"pid": 7, "host": "gpu1", "since": 86400.0, "command": "label l0grad@1-0"})
    'pid 7/gpu1 since 1970-01-02 00:00:00 UTC (label l0grad@1-0)'
    """
    since = holder.get("since")
    when = datetime.datetime.fromtimestamp(since, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if since else "?"
    what = f" ({holder['command']})" if holder.get("command") else ""
    return f"pid {holder.get('pid', '?')}/{holder.get('host', '?')} since {when}{what}"


def is_no_space(exc: BaseException | None) -> bool:
    """Whether ``exc`` or an exception it was raised from is a full disk (ENOSPC, EDQUOT).

    >>> import errno
    >>> full = OSError(errno.ENOSPC, "No space left on device")
    >>> wrapped = RuntimeError("writing a chunk failed")
    >>> wrapped.__cause__ = full
    >>> is_no_space(full), is_no_space(wrapped), is_no_space(OSError(errno.EACCES, "Permission denied"))
    (True, True, False)
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def persistent_store(url: str) -> Store:
    """The store at ``url`` for a command: ``memory://`` is refused (it would vanish with the process).

    >>> persistent_store("/data/store")
    Store('/data/store')
    >>> persistent_store("memory://scratch")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    pipeline.files.InputError: memory://scratch: memory:// stores live only inside one Python process ...
    """
    if str(url).startswith("memory://"):
        raise InputError(
            f"{url}: memory:// stores live only inside one Python process and vanish when the command ends; "
            "use a folder or an object-store URL (s3://, gs://, ...)"
        )
    return Store(url)


#: locks this process holds, per thread: (url, name) -> depth, so a holder may take its own lock again
_held = threading.local()


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("goodregions")
    except PackageNotFoundError:  # running from a source tree
        return "0+unknown"


class Store:
    """Handle on a store by URL (a local path, ``file://``, ``memory://``, ``s3://`` ...).

    Cheap to create and to pickle (workers re-open the same URL); nothing is read
    until asked.

    >>> import uuid
    >>> store = Store(f"memory://example-{uuid.uuid4().hex}")  # lives in this process only
    >>> store.is_store(), store.create(window=96, stride=32)["window"], store.is_store()
    (False, {'size': 96, 'stride': 32}, True)
    >>> import pickle
    >>> pickle.loads(pickle.dumps(store)).url == store.url  # workers re-open the URL
    True
    """

    def __init__(self, url: str) -> None:
        self.url = str(url)

    def __getstate__(self) -> dict:
        return {"url": self.url}

    def __setstate__(self, state: dict) -> None:
        self.url = state["url"]

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    # ------------------------------------------------------------------ files

    @cached_property
    def _fs_root(self) -> tuple[fsspec.AbstractFileSystem, str]:
        try:
            fs, root = fsspec.core.url_to_fs(self.url)
        except ValueError:  # fsspec: "Protocol not known: bogus"
            protocol = self.url.split("://", 1)[0]
            known = ", ".join(sorted(p for p in fsspec.available_protocols() if len(p) > 1)[:12])
            raise InputError(f"{self.url}: unknown storage protocol {protocol!r} (known: {known}, ...)") from None
        except ImportError as exc:  # s3fs / gcsfs not installed
            raise InputError(f"{self.url}: {exc}") from None
        return fs, root.rstrip("/") or "/"

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        """The fsspec filesystem of the URL, on which :meth:`path` names the store's files.

        >>> Store("/data/ds").fs.protocol
        ('file', 'local')
        """
        return self._fs_root[0]

    @property
    def root(self) -> str:
        """The store's root path on :attr:`fs` (no protocol, no trailing slash).

        >>> Store("file:///data/ds/").root
        '/data/ds'
        """
        return self._fs_root[1]

    @property
    def is_local(self) -> bool:
        """Whether the store is on a filesystem (local, NFS): ``flock`` locks, Zarr's ``LocalStore``.

        >>> Store("/data/ds").is_local, Store("memory://ds").is_local
        (True, False)
        """
        return "file" in np.atleast_1d(self.fs.protocol)

    def path(self, *parts: str) -> str:
        """The path on :attr:`fs` of ``parts`` inside the store.

        >>> Store("/data/ds").path("blurred", "450x450")
        '/data/ds/blurred/450x450'
        """
        return posixpath.join(self.root, *parts)

    def exists(self, *parts: str) -> bool:
        """Whether ``parts`` exists inside the store; a store that cannot be reached is an :class:`InputError`.

        >>> import uuid
        >>> store = Store(f"memory://example-{uuid.uuid4().hex}")  # lives in this process only
        >>> store.write_bytes("notes/a.txt", b"hello")
        >>> store.exists("notes", "a.txt"), store.exists("notes", "b.txt")
        (True, False)
        """
        try:
            return self.fs.exists(self.path(*parts))
        except InputError:
            raise
        except Exception as exc:  # missing credentials, no such bucket, no network: the first access says so
            raise self.access_error(exc) from None

    def access_error(self, exc: BaseException) -> InputError:
        """A one-line error for a store that cannot be reached (credentials, permissions, network).

        >>> print(Store("s3://bucket/ds").access_error(PermissionError("Access Denied")))
        s3://bucket/ds: cannot access the store (PermissionError: Access Denied)
        """
        name = type(exc).__name__
        hint = "; set AWS credentials (e.g. AWS_ACCESS_KEY_ID) or a profile" if "Credentials" in name else ""
        text = str(exc).strip().splitlines()
        return InputError(f"{self.url}: cannot access the store ({name}: {text[0] if text else name}){hint}")

    def write_bytes(self, relative: str, data: bytes) -> None:
        """Write ``data`` to ``relative`` atomically: a temporary name, then a rename.

        >>> import uuid
        >>> store = Store(f"memory://example-{uuid.uuid4().hex}")  # lives in this process only
        >>> store.write_bytes("notes/a.txt", b"first")
        >>> store.write_bytes("notes/a.txt", b"second")  # replaced whole: the temporary name is gone
        >>> files = store.fs.ls(store.path("notes"), detail=False)
        >>> store.read_bytes("notes/a.txt"), [p.rsplit("/", 1)[1] for p in files]
        (b'second', ['a.txt'])
        """
        final = self.path(relative)
        self.fs.makedirs(posixpath.dirname(final), exist_ok=True)
        tmp = posixpath.join(posixpath.dirname(final), f".tmp-{uuid.uuid4().hex}-{posixpath.basename(final)}")
        try:
            self.fs.pipe_file(tmp, data)
            self.fs.mv(tmp, final)
        finally:
            if self.fs.exists(tmp):
                self.fs.rm(tmp)

    def read_bytes(self, relative: str) -> bytes:
        """The contents of the file ``relative`` to the store's root.

        >>> import uuid
        >>> store = Store(f"memory://example-{uuid.uuid4().hex}")  # lives in this process only
        >>> store.write_bytes("notes/a.txt", b"hello")
        >>> store.read_bytes("notes/a.txt")
        b'hello'
        """
        return self.fs.cat_file(self.path(relative))

    # --------------------------------------------------------------- manifest

    def is_store(self) -> bool:
        """Whether the URL holds a store (its manifest exists).

        >>> import uuid
        >>> store = Store(f"memory://example-{uuid.uuid4().hex}")  # lives in this process only
        >>> store.is_store()
        False
        >>> store.create(96, 32)["runs"], store.is_store()
        ([], True)
        """
        return self.exists(MANIFEST)

    def manifest(self) -> dict[str, Any]:
        """The manifest; refuses a missing, unreadable or newer-schema store.

        >>> import uuid
        >>> store = Store(f"memory://example-{uuid.uuid4().hex}")  # lives in this process only
        >>> manifest = store.create(96, 32)
        >>> manifest == store.manifest(), manifest["schema_version"] == schema.SCHEMA_VERSION
        (True, True)
        >>> manifest["window"], manifest["kernel_capacity"], manifest["runs"]
        ({'size': 96, 'stride': 32}, 95, [])
        """
        if not self.is_store():
            raise InputError(f"{self.url}: not a goodregions store (no {MANIFEST})")
        try:
            manifest = json.loads(self.read_bytes(MANIFEST))
        except (ValueError, UnicodeDecodeError) as exc:
            raise InputError(f"{self.url}: {MANIFEST} is not valid JSON ({exc})") from None
        version = manifest.get("schema_version")
        if not isinstance(version, int):
            raise InputError(f"{self.url}: {MANIFEST} has no integer schema_version")
        if version > schema.SCHEMA_VERSION:
            raise InputError(
                f"{self.url}: store has schema version {version}, newer than this goodregions supports "
                f"({schema.SCHEMA_VERSION}); upgrade goodregions to read it"
            )
        return manifest

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        """Write ``manifest`` atomically, stamped with this schema version and package version.

        >>> import uuid
        >>> store = Store(f"memory://example-{uuid.uuid4().hex}")  # lives in this process only
        >>> manifest = store.create(96, 32)
        >>> store.write_manifest({**manifest, "note": "checked"})
        >>> store.manifest()["note"], "package_version" in store.manifest()
        ('checked', True)
        """
        manifest = {**manifest, "schema_version": schema.SCHEMA_VERSION, "package_version": _package_version()}
        self.write_bytes(MANIFEST, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())

    def create(self, window: int, stride: int) -> dict[str, Any]:
        """Open the store for writing, creating it (manifest first) if it does not exist.

        Refuses a non-empty location that is not a store, and an existing store whose
        window grid differs from ``window``/``stride``.

        >>> import uuid
        >>> store = Store(f"memory://example-{uuid.uuid4().hex}")  # lives in this process only
        >>> store.create(96, 32)["window"] == store.create(96, 32)["window"]  # the second call opens it
        True
        >>> store.create(96, 16)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        pipeline.files.InputError: window/stride: store memory://... uses windows of 96 px at stride 32, not 96 at 16
        """
        if self.is_store():
            manifest = self.manifest()
            self.check_grid(manifest, window, stride)
            return manifest
        if self.fs.exists(self.root) and [
            p for p in self.fs.ls(self.root, detail=False) if not posixpath.basename(p).startswith(LOCK_PREFIX)
        ]:
            raise InputError(f"{self.url}: exists and is not a goodregions store (no {MANIFEST}); refusing to write")
        check_window_grid(window, stride)
        manifest = {
            "window": {"size": window, "stride": stride},
            "kernel_capacity": kernel_capacity(window),
            "synth": None,
            "runs": [],
        }
        self.write_manifest(manifest)
        return self.manifest()

    def check_grid(self, manifest: dict[str, Any], window: int, stride: int) -> None:
        """Refuse a run whose window grid differs from the store's.

        >>> manifest = {"window": {"size": 228, "stride": 20}}
        >>> Store("/data/ds").check_grid(manifest, 228, 20)  # the same grid: nothing to say
        >>> Store("/data/ds").check_grid(manifest, 228, 10)
        Traceback (most recent call last):
        pipeline.files.InputError: window/stride: store /data/ds uses windows of 228 px at stride 20, not 228 at 10
        """
        grid = manifest["window"]
        if (grid["size"], grid["stride"]) != (window, stride):
            raise InputError(
                f"window/stride: store {self.url} uses windows of {grid['size']} px at stride "
                f"{grid['stride']}, not {window} at {stride}"
            )

    # ----------------------------------------------------------------- tables

    def read_table(self, relative: str, table_schema: pa.Schema) -> pa.Table:
        """A Parquet table of the store, or an empty one with the schema when absent.

        A file that is not Parquet (garbage, truncated) or lacks the schema's columns is an
        :class:`InputError` naming it: ``STORE/images.parquet: not a Parquet file (...)``.

        >>> import uuid
        >>> store = Store(f"memory://example-{uuid.uuid4().hex}")  # lives in this process only
        >>> empty = store.read_table("images.parquet", schema.IMAGES)  # absent: an empty table of the schema
        >>> empty.num_rows, empty.schema.names[:3]
        (0, ['image_id', 'origin', 'sharp_source'])
        >>> store.write_bytes("images.parquet", b"not parquet")
        >>> store.read_table("images.parquet", schema.IMAGES)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        pipeline.files.InputError: memory://example-.../images.parquet: not a Parquet file (...)
        """
        if not self.exists(relative):
            return schema.empty(table_schema)
        where = f"{self.url.rstrip('/')}/{relative}"
        try:
            with self.fs.open(self.path(relative), "rb") as fh:
                table = pq.read_table(fh)
        except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as exc:
            raise InputError(f"{where}: not a Parquet file ({_first_line(exc)})") from None
        try:
            return table.select(table_schema.names).cast(table_schema)
        except (KeyError, pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise InputError(f"{where}: not a table of this store's schema ({_first_line(exc)})") from None

    def write_table(self, relative: str, table: pa.Table) -> None:
        """Write ``table`` to ``relative`` as zstd-compressed Parquet, atomically.

        >>> import uuid
        >>> store = Store(f"memory://example-{uuid.uuid4().hex}")  # lives in this process only
        >>> import pyarrow as pa
        >>> store.write_table("extra/table.parquet", pa.table({"x": [1, 2, 3]}))
        >>> store.read_table("extra/table.parquet", pa.schema([("x", pa.int64())]))["x"].to_pylist()
        [1, 2, 3]
        """
        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression="zstd")
        self.write_bytes(relative, buffer.getvalue())

    def images(self) -> pa.Table:
        """The images table (:data:`schema.IMAGES`); empty while the store has none.

        >>> import uuid
        >>> store = Store(f"memory://example-{uuid.uuid4().hex}")  # lives in this process only
        >>> images = store.images()  # a new store: no rows yet
        >>> images.num_rows, images.num_columns
        (0, 15)
        """
        return self.read_table("images.parquet", schema.IMAGES)

    def write_images(self, images: pa.Table) -> None:
        """Replace the images table and the windows table derived from it.

        >>> import uuid
        >>> store = Store(f"memory://example-{uuid.uuid4().hex}")  # lives in this process only
        >>> _ = store.create(window=8, stride=4)
        >>> new = NewImages(store.images())
        >>> _ = new.kernel_row("file:kernels/k1.npy", 7)
        >>> _ = new.add("ingest", sharp_source=None, kernel_source="file:kernels/k1.npy",
        ...             blurred=("blurred/16x16", new.take("blurred/16x16", (16, 16))), sharp=None, kernel_size=3)
        >>> store.write_images(pa.Table.from_pylist(new.rows, schema=schema.IMAGES))
        >>> windows = store.windows()  # 2 x 2 windows of 8 px at stride 4, centred
        >>> store.images().num_rows, windows["y"].to_pylist(), windows["x"].to_pylist()
        (1, [2, 2, 6, 6], [2, 6, 2, 6])
        """
        from .windows import windows_table

        grid = self.manifest()["window"]
        images = images.cast(schema.IMAGES).sort_by("image_id")
        self.write_table("windows.parquet", windows_table(images, grid["size"], grid["stride"]))
        self.write_table("images.parquet", images)

    def windows(self) -> pa.Table:
        """The windows table (:data:`schema.WINDOWS`), derived from the images and the window grid.

        >>> import uuid
        >>> store = Store(f"memory://example-{uuid.uuid4().hex}")  # lives in this process only
        >>> windows = store.windows()  # none yet (see :meth:`write_images` for some)
        >>> windows.num_rows, windows.schema.names
        (0, ['image_id', 'window_id', 'y', 'x', 'size'])
        """
        return self.read_table("windows.parquet", schema.WINDOWS)

    def append_images(
        self,
        new: NewImages,
        write_pixels: Callable[[dict[str, Any]], None],
        run: dict[str, Any],
        synth: dict[str, Any] | None = None,
    ) -> None:
        """The one way images enter the store (``synth``, ``ingest``); call it holding :meth:`lock`.

        Grows the arrays ``new.arrays`` names to the rows it took, calls ``write_pixels(opened
        arrays by name)``, writes the images table (``new.images`` + ``new.rows``) and the windows
        table that make the new rows visible, then records ``run`` (and the ``synth`` settings) in
        the manifest.  Until the tables are written nothing of this is visible; if that point is
        not reached (a full disk, an interrupt) the chunks written for the new rows are removed
        again, so no chunk is left that no row points to.  A full disk ends in an
        :class:`InputError` that says so.

        >>> import uuid
        >>> store = Store(f"memory://example-{uuid.uuid4().hex}")  # lives in this process only
        >>> import numpy as np
        >>> _ = store.create(window=8, stride=4)
        >>> new = NewImages(store.images())
        >>> kernel_row, _ = new.kernel_row("file:kernels/k1.npy", 7)
        >>> blurred = ("blurred/16x16", new.take("blurred/16x16", (16, 16)))
        >>> _ = new.add("ingest", sharp_source=None, kernel_source="file:kernels/k1.npy", blurred=blurred, sharp=None,
        ...             kernel_size=3)
        >>> def write_pixels(arrays):
        ...     arrays["kernels"][kernel_row] = np.pad(np.full((3, 3), 1 / 9), 2)
        ...     arrays["blurred/16x16"][blurred[1]] = np.full((16, 16), 0.5)
        >>> with store.lock(command="example"):
        ...     store.append_images(new, write_pixels, {"command": "example"})
        >>> store.images().num_rows, store.windows().num_rows, store.manifest()["runs"]
        (1, 4, [{'command': 'example', 'images_added': 1}])
        >>> import errno
        >>> def full_disk(arrays):  # a second run, whose pixels do not fit
        ...     arrays["blurred/16x16"][1] = np.zeros((16, 16))
        ...     raise OSError(errno.ENOSPC, "No space left on device")
        >>> more = NewImages(store.images())
        >>> _ = more.add("ingest", sharp_source=None, kernel_source="file:kernels/k1.npy",
        ...              blurred=("blurred/16x16", more.take("blurred/16x16", (16, 16))), sharp=None, kernel_size=3)
        >>> store.append_images(more, full_disk, {"command": "second"})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        pipeline.files.InputError: memory://example-...: no space left on device; none of this run's 1 images ...
        >>> store.images().num_rows, store.array_rows("blurred/16x16"), sorted(store.chunk_rows("blurred/16x16"))
        (1, 1, [0])
        """
        images, rows, arrays = new.images, new.rows, new.arrays
        before = {name: self.array_rows(name) for name in arrays}
        tables = False
        try:
            opened = {name: self.ensure_array(name, n, shape) for name, (n, shape) in arrays.items()}
            write_pixels(opened)
            tables = True
            self.write_images(pa.concat_tables([images, pa.Table.from_pylist(rows, schema=schema.IMAGES)]))
        except BaseException as exc:
            with contextlib.suppress(Exception):  # best effort: the original error is the one to report
                self.discard_rows(before)
                if tables:  # the windows table may already describe the new rows
                    self.write_images(images)
            if is_no_space(exc):
                raise InputError(
                    f"{self.url}: no space left on device; none of this run's {len(rows)} images were committed "
                    f"(the store holds its {images.num_rows} images as before) and the chunks written for them "
                    "were removed"
                ) from None
            raise
        manifest = self.manifest()
        if synth is not None:
            manifest["synth"] = {**(manifest.get("synth") or {}), **synth}
        manifest["runs"] = [*manifest.get("runs", []), {**run, "images_added": len(rows)}]
        try:
            self.write_manifest(manifest)
        except OSError as exc:
            if not is_no_space(exc):
                raise
            raise InputError(
                f"{self.url}: no space left on device after committing this run's {len(rows)} images (the store "
                f"holds {images.num_rows + len(rows)}); only the manifest's record of the run is missing"
            ) from None

    def array_rows(self, name: str) -> int | None:
        """Rows of the zarr array ``name``, or None when there is no such array.

        >>> import uuid
        >>> store = Store(f"memory://example-{uuid.uuid4().hex}")  # lives in this process only
        >>> _ = store.ensure_array("blurred/16x16", 3, (16, 16))
        >>> store.array_rows("blurred/16x16"), store.array_rows("blurred/32x32")
        (3, None)
        """
        import zarr

        try:
            return int(self.array(name).shape[0])
        except (FileNotFoundError, KeyError, zarr.errors.ArrayNotFoundError, zarr.errors.NodeTypeValidationError):
            return None

    def chunk_rows(self, name: str) -> dict[int, list[str]]:
        """Chunk files of the array ``name`` by row (the first chunk index: one chunk per row).

        >>> import uuid
        >>> store = Store(f"memory://example-{uuid.uuid4().hex}")  # lives in this process only
        >>> import numpy as np
        >>> array = store.ensure_array("blurred/16x16", 3, (16, 16))
        >>> array[2] = np.zeros((16, 16))  # only written rows have a chunk
        >>> sorted(store.chunk_rows("blurred/16x16"))
        [2]
        """
        folder = self.path(name, "c")
        out: dict[int, list[str]] = {}
        if not self.fs.exists(folder):
            return out
        for path in self.fs.find(folder):
            first = posixpath.relpath(path, folder).split("/")[0]
            if first.isdigit():
                out.setdefault(int(first), []).append(path)
        return out

    def discard_rows(self, before: dict[str, int | None]) -> int:
        """Undo growth: rows at or beyond ``before[name]`` lose their chunks (an array that was absent goes).

        Returns the number of chunk files removed.

        >>> import uuid
        >>> store = Store(f"memory://example-{uuid.uuid4().hex}")  # lives in this process only
        >>> import numpy as np
        >>> array = store.ensure_array("blurred/16x16", 1, (16, 16))
        >>> array[0] = np.zeros((16, 16))
        >>> before = {name: store.array_rows(name) for name in ("blurred/16x16", "sharp/16x16")}  # 1 and None
        >>> grown = store.ensure_array("blurred/16x16", 3, (16, 16))
        >>> grown[1:] = np.ones((2, 16, 16))
        >>> store.ensure_array("sharp/16x16", 1, (16, 16))[0] = np.ones((16, 16))
        >>> store.discard_rows(before), store.array_rows("blurred/16x16"), store.exists("sharp/16x16")
        (3, 1, False)
        """
        removed = 0
        for name, rows in before.items():
            if rows is None:
                if self.exists(name):
                    removed += sum(len(v) for v in self.chunk_rows(name).values())
                    self.fs.rm(self.path(name), recursive=True)
                continue
            for row, paths in self.chunk_rows(name).items():
                if row >= rows:
                    for path in paths:
                        self.fs.rm(path)
                    removed += len(paths)
            arr = self.array(name, "r+")
            if arr.shape[0] > rows:
                arr.resize((rows, *arr.shape[1:]))
        return removed

    # ------------------------------------------------------------------ locks

    @contextlib.contextmanager
    def lock(
        self, name: str = "", *, wait: bool = False, command: str = "", lease_seconds: float = LEASE_SECONDS
    ) -> Iterator[None]:
        """Hold the writer lock ``name`` of this store (``""``: the store's images; see the module docstring).

        Busy: raise :class:`StoreBusy`, or with ``wait`` poll until it is free.  A lock left by a
        dead process is taken over (on a filesystem the kernel released it; a lease has expired).
        The same thread may take a lock it holds again.

        >>> import uuid
        >>> store = Store(f"memory://example-{uuid.uuid4().hex}")  # lives in this process only
        >>> with store.lock(command="example"):
        ...     with store.lock():  # the same thread may take it again
        ...         store.exists(".lock.json")  # on an object store the lock is a lease object
        True
        >>> store.exists(".lock.json")
        False
        """
        key = (self.url, name)
        depth = getattr(_held, "locks", None)
        if depth is None:
            depth = _held.locks = {}
        if depth.get(key):
            depth[key] += 1
            try:
                yield
            finally:
                depth[key] -= 1
            return
        relative = LOCK_PREFIX + (f"-{name}" if name else "")
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(), "command": command}
        release = (self._flock if self.is_local else self._lease)(relative, holder, wait, lease_seconds)
        depth[key] = 1
        try:
            yield
        finally:
            depth.pop(key, None)
            release()

    def _wait_or_raise(self, holder: dict, wait: bool, announced: list) -> None:
        if not wait:
            raise StoreBusy(self.url, holder)
        if not announced:
            log.warning("%s is being written by %s; waiting for it", self.url, describe_holder(holder))
            announced.append(True)
        time.sleep(0.2)

    def _flock(self, relative: str, holder: dict, wait: bool, lease_seconds: float) -> Callable[[], None]:
        import fcntl

        if self.fs.isfile(self.root):
            raise InputError(f"{self.url}: is a file, not a goodregions store")
        created_root = not self.fs.exists(self.root)
        os.makedirs(self.root, exist_ok=True)
        path = self.path(relative)
        announced: list = []
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                previous = _read_holder(fd)
                os.close(fd)
                self._wait_or_raise(previous, wait, announced)
                continue
            try:  # the file may have been removed by the holder we waited for: lock the one that is there
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            break
        previous = _read_holder(fd)
        if previous.get("pid"):
            log.warning("%s: taking over the lock of %s, no longer running", self.url, describe_holder(previous))
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)

        def release() -> None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            os.close(fd)  # closing releases the flock
            if created_root:  # a run that wrote nothing leaves no folder behind
                with contextlib.suppress(OSError):
                    os.rmdir(self.root)

        return release

    def _lease(self, relative: str, holder: dict, wait: bool, lease_seconds: float) -> Callable[[], None]:
        path = self.path(relative + ".json")
        token = uuid.uuid4().hex

        def body() -> bytes:
            return json.dumps({**holder, "token": token, "expires": time.time() + lease_seconds}).encode()

        def current() -> dict | None:
            try:
                return json.loads(self.fs.cat_file(path))
            except FileNotFoundError:
                return None
            except (ValueError, UnicodeDecodeError):  # a torn or foreign object: treat as expired
                return {}
            except Exception as exc:  # credentials, permissions, network: one line, not the backend's traceback
                raise self.access_error(exc) from None

        announced: list = []
        while True:
            try:
                self.fs.pipe_file(path, body(), mode="create")  # conditional where the store supports it
            except Exception:  # exists (FileExistsError, or a precondition failure the backend reports its way)
                lease = current()
                if lease is None:
                    continue
                if lease.get("expires", 0) < time.time():
                    log.warning("%s: taking over an expired lease of %s", self.url, describe_holder(lease))
                    with contextlib.suppress(FileNotFoundError):
                        self.fs.rm(path)
                    continue
                self._wait_or_raise(lease, wait, announced)
                continue
            self.fs.invalidate_cache(path)
            if (current() or {}).get("token") == token:  # a backend without conditional writes: the last one wins
                break
        stop = threading.Event()

        def renew() -> None:
            while not stop.wait(lease_seconds / 3):
                lease = current()
                if not lease or lease.get("token") != token:
                    log.error("%s: lost the lease %s", self.url, path)
                    return
                self.fs.pipe_file(path, body())

        thread = threading.Thread(target=renew, name=f"lease {path}", daemon=True)
        thread.start()

        def release() -> None:
            stop.set()
            thread.join()
            if (current() or {}).get("token") == token:
                with contextlib.suppress(FileNotFoundError):
                    self.fs.rm(path)

        return release

    # ------------------------------------------------------------------- zarr

    def zarr_store(self, read_only: bool = False) -> Any:
        """Zarr's storage of the store's arrays: ``LocalStore`` on a filesystem, else ``FsspecStore``.

        >>> type(Store("/data/ds").zarr_store(read_only=True)).__name__, type(Store("memory://ds").zarr_store()).__name__
        ('LocalStore', 'FsspecStore')
        """
        import zarr

        if self.is_local:
            return zarr.storage.LocalStore(self.root, read_only=read_only)
        return zarr.storage.FsspecStore.from_url(self.url, read_only=read_only)

    def array(self, name: str, mode: str = "r") -> Any:
        """The zarr array ``name`` (e.g. ``"blurred/450x450"``).

        >>> import uuid
        >>> store = Store(f"memory://example-{uuid.uuid4().hex}")  # lives in this process only
        >>> import numpy as np
        >>> store.ensure_array("blurred/16x16", 2, (16, 16))[1] = np.full((16, 16), 0.25)
        >>> array = store.array("blurred/16x16")
        >>> array.shape, float(array[1].mean())
        ((2, 16, 16), 0.25)
        """
        import zarr

        return zarr.open_array(store=self.zarr_store(read_only=mode == "r"), path=name, mode=mode)

    def ensure_array(
        self, name: str, rows: int, shape: tuple[int, ...], dimension_names: tuple[str, ...] | None = None
    ) -> Any:
        """Create ``name`` as ``(rows, *shape)`` float32 with one chunk per row, or grow it to ``rows``.

        ``dimension_names`` defaults to ``(<group>_index, y, x)`` for image-like arrays.

        >>> import uuid
        >>> store = Store(f"memory://example-{uuid.uuid4().hex}")  # lives in this process only
        >>> import numpy as np
        >>> array = store.ensure_array("sharp/16x16", 2, (16, 16))
        >>> array.shape, array.chunks, bool(np.isnan(array[1]).all())  # one chunk per row; unwritten rows are NaN
        ((2, 16, 16), (1, 16, 16), True)
        >>> store.ensure_array("sharp/16x16", 5, (16, 16)).shape  # grown, never shrunk
        (5, 16, 16)
        """
        import zarr

        zstore = self.zarr_store()
        try:
            arr = zarr.open_array(store=zstore, path=name, mode="r+")
        except (FileNotFoundError, KeyError, zarr.errors.ArrayNotFoundError, zarr.errors.NodeTypeValidationError):
            return zarr.create_array(
                store=zstore,
                name=name,
                shape=(rows, *shape),
                chunks=(1, *shape),
                dtype="float32",
                fill_value=np.nan,
                zarr_format=3,
                # named like the images.parquet columns that index them, so xarray can open the groups
                dimension_names=dimension_names or (f"{posixpath.dirname(name) or 'kernel'}_index", "y", "x"),
            )
        if tuple(arr.shape[1:]) != tuple(shape):
            raise InputError(f"{self.url}: array {name} holds {arr.shape[1:]} items, not {shape}")
        if arr.shape[0] < rows:
            arr.resize((rows, *shape))
        return arr

    def check_same(self, name: str, index: int, pixels: np.ndarray, source: str, key: str) -> None:
        """Refuse an input whose source key is already in the store with other contents.

        Sources are keyed by folder and file name (``file:kernels/k1.npy``), so a file of the same
        name from another folder would otherwise pass for the one already stored: its pairs would be
        skipped as done, or its images tied to the stored kernel.  ``pixels`` is the input as it would
        be written to row ``index`` of array ``name``.

        >>> import uuid
        >>> store = Store(f"memory://example-{uuid.uuid4().hex}")  # lives in this process only
        >>> import numpy as np
        >>> store.ensure_array("kernels", 1, (3, 3))[0] = np.full((3, 3), 1 / 9)
        >>> store.check_same("kernels", 0, np.full((3, 3), 1 / 9), "b/k1.npy", "file:b/k1.npy")  # the same: fine
        >>> store.check_same("kernels", 0, np.eye(3) / 3, "b/k1.npy", "file:b/k1.npy")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        pipeline.files.InputError: b/k1.npy: memory://example-... already holds a different 'file:b/k1.npy' ...
        """
        stored = np.asarray(self.array(name)[int(index)])
        if stored.shape != pixels.shape or not np.allclose(stored, pixels, rtol=0, atol=1e-6):
            raise InputError(
                f"{source}: {self.url} already holds a different {key!r} (the same folder and file name); "
                "rename the file or its folder, or use another store"
            )

    def kernels(self, indices: Any) -> np.ndarray:
        """True kernels by ``kernel_index``, ``(n, K, K)`` at the store's kernel capacity.

        >>> import uuid
        >>> store = Store(f"memory://example-{uuid.uuid4().hex}")  # lives in this process only
        >>> import numpy as np
        >>> kernels = store.ensure_array("kernels", 2, (7, 7))
        >>> kernels[0], kernels[1] = np.pad(np.full((3, 3), 1 / 9), 2), np.pad(np.ones((1, 1)), 3)
        >>> stored = store.kernels([1, 0])
        >>> stored.shape, np.round(stored.sum(axis=(1, 2)), 6).tolist()
        ((2, 7, 7), [1.0, 1.0])
        """
        return np.asarray(self.array("kernels").get_orthogonal_selection((np.asarray(indices),)))

    def kernel(self, index: int, size: int) -> np.ndarray:
        """One true kernel cropped to its own ``size x size``.

        >>> import uuid
        >>> store = Store(f"memory://example-{uuid.uuid4().hex}")  # lives in this process only
        >>> import numpy as np
        >>> store.ensure_array("kernels", 1, (7, 7))[0] = np.pad(np.full((3, 3), 1 / 9), 2)
        >>> kernel = store.kernel(0, 3)
        >>> kernel.shape, round(float(kernel.sum()), 6)
        ((3, 3), 1.0)
        """
        from kernels_gpu.kernels import fit_size

        return fit_size(np.asarray(self.array("kernels")[int(index)]), size)

    def disk_usage(self) -> dict[str, int]:
        """Bytes on disk per top-level entry of the store (lock files left out).

        >>> import uuid
        >>> store = Store(f"memory://example-{uuid.uuid4().hex}")  # lives in this process only
        >>> import numpy as np
        >>> _ = store.create(96, 32)
        >>> store.ensure_array("kernels", 1, (7, 7))[0] = np.zeros((7, 7))
        >>> usage = store.disk_usage()
        >>> sorted(usage), usage["kernels"] > 0
        (['kernels', 'manifest.json', 'zarr.json'], True)
        """
        usage: dict[str, int] = {}
        for path, info in self.fs.find(self.root, detail=True).items():
            top = posixpath.relpath(path, self.root).split("/")[0]
            if not top.startswith(LOCK_PREFIX):
                usage[top] = usage.get(top, 0) + int(info.get("size") or 0)
        return usage


class NewImages:
    """The rows one ``synth`` or ``ingest`` run appends to the images table ``images``, and the rows they take.

    It knows what the table already holds (:attr:`kernels`, :meth:`stored`), hands out the next
    free rows of the ``kernels`` array (:meth:`kernel_row`) and of each pixel array (:meth:`take`),
    and makes each new row of :data:`schema.IMAGES` with the next image id (:meth:`add`).
    :attr:`arrays` is how far each array must grow; :meth:`Store.append_images` writes it all.

    >>> new = NewImages(schema.empty(schema.IMAGES))  # an empty store
    >>> new.kernel_row("file:k/a.npy", 7), new.kernel_row("file:k/b.npy", 7), new.kernel_row("file:k/a.npy", 7)
    ((0, True), (1, True), (0, False))
    >>> blurred = ("blurred/16x16", new.take("blurred/16x16", (16, 16)))
    >>> row = new.add("ingest", sharp_source=None, kernel_source="file:k/b.npy", blurred=blurred, sharp=None,
    ...               kernel_size=5)
    >>> row["image_id"], row["kernel_index"], (row["height"], row["width"]), len(row) == len(schema.IMAGES)
    (0, 1, (16, 16), True)
    >>> new.arrays
    {'kernels': (2, (7, 7)), 'blurred/16x16': (1, (16, 16))}
    """

    def __init__(self, images: pa.Table) -> None:
        self.images = images
        #: the new rows of the images table, in image id order
        self.rows: list[dict[str, Any]] = []
        #: array name -> (rows it must have, shape of one item) for the arrays that get new rows
        self.arrays: dict[str, tuple[int, tuple[int, ...]]] = {}
        #: kernel source -> its row of the ``kernels`` array: the stored ones, then those :meth:`kernel_row` adds
        self.kernels: dict[str, int] = dict(
            zip(images["kernel_source"].to_pylist(), images["kernel_index"].to_pylist(), strict=True)
        )
        self._next: dict[str, int] = {}

    def stored(self, what: str, origin: str | None = None) -> dict[str, tuple[str, int]]:
        """``{source: (array, row)}`` of the stored ``what`` (``"sharp"`` or ``"blurred"``) images that have a source.

        ``origin`` (``"synth"``, ``"ingest"``) keeps the rows of that origin only.

        >>> new = NewImages(schema.empty(schema.IMAGES))
        >>> _ = new.kernel_row("file:k/a.npy", 7)
        >>> blurred = ("blurred/16x16", new.take("blurred/16x16", (16, 16)))
        >>> _ = new.add("ingest", sharp_source=None, kernel_source="file:k/a.npy", blurred_source="file:b/im1.png",
        ...             blurred=blurred, sharp=None, kernel_size=5)
        >>> later = NewImages(pa.Table.from_pylist(new.rows, schema=schema.IMAGES))  # the next run's view
        >>> later.stored("blurred"), later.stored("sharp"), later.stored("blurred", origin="synth")
        ({'file:b/im1.png': ('blurred/16x16', 0)}, {}, {})
        """
        columns = (f"{what}_source", f"{what}_array", f"{what}_index", "origin")
        return {
            source: (array, index)
            for source, array, index, o in zip(*(self.images[c].to_pylist() for c in columns), strict=True)
            if source is not None and (origin is None or o == origin)
        }

    def _first_free(self, name: str) -> int:
        import pyarrow.compute as pc

        images = self.images
        if name == "image_id":
            column = images["image_id"]
        elif name == "kernels":
            column = images["kernel_index"]
        else:  # blurred/<H>x<W> or sharp/<H>x<W>: the rows of that array
            group = name.split("/", 1)[0]
            column = images.filter(pc.equal(images[f"{group}_array"], name))[f"{group}_index"]
        return int(pc.max(column).as_py()) + 1 if len(column) else 0

    def _next_row(self, name: str) -> int:
        if name not in self._next:
            self._next[name] = self._first_free(name)
        self._next[name] += 1
        return self._next[name] - 1

    def take(self, array: str, shape: tuple[int, ...]) -> int:
        """The next free row of the pixel array ``array`` (``"blurred/450x450"``), whose items are ``shape``.

        >>> new = NewImages(schema.empty(schema.IMAGES))
        >>> [new.take("blurred/16x16", (16, 16)) for _ in range(2)], new.take("blurred/32x32", (32, 32))
        ([0, 1], 0)
        >>> new.arrays
        {'blurred/16x16': (2, (16, 16)), 'blurred/32x32': (1, (32, 32))}
        """
        row = self._next_row(array)
        self.arrays[array] = (row + 1, tuple(shape))
        return row

    def kernel_row(self, source: str, capacity: int) -> tuple[int, bool]:
        """``(row, new)``: the row of the kernel ``source`` in the ``kernels`` array (``capacity`` px a side).

        A kernel already stored or already added keeps its row (``new`` False); another takes the next free one.

        >>> new = NewImages(schema.empty(schema.IMAGES))
        >>> new.kernel_row("trajectory:seed=0,sizes=11:25#0", 95), new.kernel_row("trajectory:seed=0,sizes=11:25#0", 95)
        ((0, True), (0, False))
        >>> new.arrays["kernels"]
        (1, (95, 95))
        """
        if source in self.kernels:
            return self.kernels[source], False
        self.kernels[source] = row = self.take("kernels", (capacity, capacity))
        return row, True

    def add(
        self,
        origin: str,
        *,
        sharp_source: str | None,
        kernel_source: str,
        blurred: tuple[str, int],
        sharp: tuple[str, int] | None,
        kernel_size: int,
        blurred_source: str | None = None,
        noise_sigma: float | None = None,
        seed: int | None = None,
    ) -> dict[str, Any]:
        """Append the row of one new image and return it: it gets the next image id.

        ``blurred`` and ``sharp`` are ``(array, row)`` (``sharp`` None where unknown), ``blurred`` a
        row from :meth:`take` (its item shape is the image's height and width); the kernel is
        ``kernel_source``'s row (:meth:`kernel_row`).

        >>> new = NewImages(schema.empty(schema.IMAGES))
        >>> _ = new.kernel_row("file:k/a.npy", 7)
        >>> sharp = ("sharp/16x16", new.take("sharp/16x16", (16, 16)))
        >>> for _ in range(2):  # two blurs of one sharp picture
        ...     blurred = ("blurred/16x16", new.take("blurred/16x16", (16, 16)))
        ...     _ = new.add("synth", sharp_source="builtin:camera", kernel_source="file:k/a.npy", blurred=blurred,
        ...                 sharp=sharp, kernel_size=5, noise_sigma=0.01, seed=0)
        >>> [(r["image_id"], r["blurred_index"], r["sharp_index"]) for r in new.rows]
        [(0, 0, 0), (1, 1, 0)]
        """
        height, width = self.arrays[blurred[0]][1]
        sharp_array, sharp_index = sharp if sharp is not None else (None, None)
        row = {
            "image_id": self._next_row("image_id"), "origin": origin, "sharp_source": sharp_source,
            "kernel_source": kernel_source, "blurred_source": blurred_source, "height": height, "width": width,
            "kernel_size": kernel_size, "noise_sigma": noise_sigma, "seed": seed, "blurred_array": blurred[0],
            "blurred_index": blurred[1], "sharp_array": sharp_array, "sharp_index": sharp_index,
            "kernel_index": self.kernels[kernel_source],
        }  # fmt: skip
        self.rows.append(row)
        return row


def check_window_grid(window: int, stride: int) -> None:
    """A window grid a store can have: windows of at least 3 px, a stride of at least 1 px.

    >>> check_window_grid(228, 20)  # the paper's grid
    >>> check_window_grid(2, 20)
    Traceback (most recent call last):
    pipeline.files.InputError: window: must be >= 3 px, got 2
    """
    if window < 3:
        raise InputError(f"window: must be >= 3 px, got {window}")
    if stride < 1:
        raise InputError(f"stride: must be >= 1 px, got {stride}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0].rstrip(" .") if text else type(exc).__name__


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        return json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (ValueError, UnicodeDecodeError, OSError):
        return {}
