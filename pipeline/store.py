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
(``STORE/.lock``) and one ``label`` at a time per estimator (``STORE/.lock-label-<id>``);
``fcntl.flock`` on a filesystem, a lease object on an object store (:mod:`pipeline.store_locks`).

``memory://`` URLs work through the Python API, but such a store lives only inside one
process: the command line refuses them (:func:`persistent_store`).

:class:`Store` is the entry point; its parts live beside it: its base classes in
:mod:`pipeline.store_files` (the URL's files) and :mod:`pipeline.store_arrays` (the Zarr arrays),
the writer locks in :mod:`pipeline.store_locks`, and how ``synth`` and ``ingest`` add images in
:mod:`pipeline.store_append`.
"""

from __future__ import annotations

import contextlib
import io
import json
import posixpath
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from . import schema, store_append, store_locks
from .files import InputError, is_no_space
from .store_append import NewImages
from .store_arrays import StoreArrays
from .store_locks import LEASE_SECONDS, LOCK_PREFIX, StoreBusy

__all__ = ["MANIFEST", "NewImages", "Store", "StoreBusy", "is_no_space", "persistent_store"]

MANIFEST = "manifest.json"
#: the window grid a new store gets when none is asked for (the paper's)
DEFAULT_WINDOW, DEFAULT_STRIDE = 228, 20


def kernel_capacity(window: int) -> int:
    """Side of the stored kernels array for windows of ``window`` px: the largest odd kernel a window holds.

    >>> kernel_capacity(228), kernel_capacity(101)
    (227, 101)
    """
    return window - 1 + window % 2


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


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("goodregions")
    except PackageNotFoundError:  # running from a source tree
        return "0+unknown"


class Store(StoreArrays):
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

    Its files (:meth:`path`, :meth:`exists`, :meth:`write_bytes` ...) come from
    :class:`~pipeline.store_files.StoreFiles`, its Zarr arrays (:meth:`array`, :meth:`ensure_array`,
    :meth:`kernel` ...) from :class:`~pipeline.store_arrays.StoreArrays`.
    """

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

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

        Writes the pixels, then the tables that make them visible, then the run's record; a run that
        fails before its tables are written leaves no chunk behind: :func:`pipeline.store_append.append_images`.
        """
        store_append.append_images(self, new, write_pixels, run, synth)

    # ------------------------------------------------------------------ locks

    def lock(
        self, name: str = "", *, wait: bool = False, command: str = "", lease_seconds: float = LEASE_SECONDS
    ) -> contextlib.AbstractContextManager[None]:
        """Hold the writer lock ``name`` of this store (``""``: the store's images; see :mod:`pipeline.store_locks`).

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
        return store_locks.hold(self, name, wait=wait, command=command, lease_seconds=lease_seconds)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0].rstrip(" .") if text else type(exc).__name__
