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
"""

from __future__ import annotations

import io
import json
import posixpath
import uuid
from functools import cached_property
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import schema
from .files import InputError

__all__ = ["MANIFEST", "Store"]

MANIFEST = "manifest.json"


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
        fs, root = fsspec.core.url_to_fs(self.url)
        return fs, root.rstrip("/") or "/"

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        return self._fs_root[0]

    @property
    def root(self) -> str:
        return self._fs_root[1]

    @property
    def is_local(self) -> bool:
        return "file" in np.atleast_1d(self.fs.protocol)

    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def exists(self, *parts: str) -> bool:
        return self.fs.exists(self.path(*parts))

    def write_bytes(self, relative: str, data: bytes) -> None:
        """Write ``data`` to ``relative`` atomically: a temporary name, then a rename."""
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
        return self.fs.cat_file(self.path(relative))

    # --------------------------------------------------------------- manifest

    def is_store(self) -> bool:
        return self.exists(MANIFEST)

    def manifest(self) -> dict[str, Any]:
        """The manifest; refuses a missing, unreadable or newer-schema store."""
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
        manifest = {**manifest, "schema_version": schema.SCHEMA_VERSION, "package_version": _package_version()}
        self.write_bytes(MANIFEST, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())

    def create(self, window: int, stride: int) -> dict[str, Any]:
        """Open the store for writing, creating it (manifest first) if it does not exist.

        Refuses a non-empty location that is not a store, and an existing store whose
        window grid differs from ``window``/``stride``.
        """
        if self.is_store():
            manifest = self.manifest()
            self.check_grid(manifest, window, stride)
            return manifest
        if self.fs.exists(self.root) and self.fs.ls(self.root, detail=False):
            raise InputError(f"{self.url}: exists and is not a goodregions store (no {MANIFEST}); refusing to write")
        if window < 3 or stride < 1:
            raise InputError(f"window/stride: need a window >= 3 and a stride >= 1, got {window} and {stride}")
        manifest = {
            "window": {"size": window, "stride": stride},
            "kernel_capacity": window - 1 + window % 2,
            "synth": None,
            "runs": [],
        }
        self.write_manifest(manifest)
        return self.manifest()

    def check_grid(self, manifest: dict[str, Any], window: int, stride: int) -> None:
        """Refuse a run whose window grid differs from the store's."""
        grid = manifest["window"]
        if (grid["size"], grid["stride"]) != (window, stride):
            raise InputError(
                f"window/stride: store {self.url} uses windows of {grid['size']} px at stride "
                f"{grid['stride']}, not {window} at {stride}"
            )

    # ----------------------------------------------------------------- tables

    def read_table(self, relative: str, table_schema: pa.Schema) -> pa.Table:
        """A Parquet table of the store, or an empty one with the schema when absent."""
        if not self.exists(relative):
            return schema.empty(table_schema)
        with self.fs.open(self.path(relative), "rb") as fh:
            table = pq.read_table(fh)
        return table.select(table_schema.names).cast(table_schema)

    def write_table(self, relative: str, table: pa.Table) -> None:
        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression="zstd")
        self.write_bytes(relative, buffer.getvalue())

    def images(self) -> pa.Table:
        return self.read_table("images.parquet", schema.IMAGES)

    def write_images(self, images: pa.Table) -> None:
        """Replace the images table and the windows table derived from it."""
        from .windows import windows_table

        grid = self.manifest()["window"]
        images = images.cast(schema.IMAGES).sort_by("image_id")
        self.write_table("windows.parquet", windows_table(images, grid["size"], grid["stride"]))
        self.write_table("images.parquet", images)

    def windows(self) -> pa.Table:
        return self.read_table("windows.parquet", schema.WINDOWS)

    # ------------------------------------------------------------------- zarr

    def zarr_store(self, read_only: bool = False) -> Any:
        import zarr

        if self.is_local:
            return zarr.storage.LocalStore(self.root, read_only=read_only)
        return zarr.storage.FsspecStore.from_url(self.url, read_only=read_only)

    def array(self, name: str, mode: str = "r") -> Any:
        """The zarr array ``name`` (e.g. ``"blurred/450x450"``)."""
        import zarr

        return zarr.open_array(store=self.zarr_store(read_only=mode == "r"), path=name, mode=mode)

    def ensure_array(
        self, name: str, rows: int, shape: tuple[int, ...], dimension_names: tuple[str, ...] | None = None
    ) -> Any:
        """Create ``name`` as ``(rows, *shape)`` float32 with one chunk per row, or grow it to ``rows``.

        ``dimension_names`` defaults to ``(<group>_index, y, x)`` for image-like arrays.
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
        """
        stored = np.asarray(self.array(name)[int(index)])
        if stored.shape != pixels.shape or not np.allclose(stored, pixels, rtol=0, atol=1e-6):
            raise InputError(
                f"{source}: {self.url} already holds a different {key!r} (the same folder and file name); "
                "rename the file or its folder, or use another store"
            )

    def kernels(self, indices: Any) -> np.ndarray:
        """True kernels by ``kernel_index``, ``(n, K, K)`` at the store's kernel capacity."""
        return np.asarray(self.array("kernels").get_orthogonal_selection((np.asarray(indices),)))

    def kernel(self, index: int, size: int) -> np.ndarray:
        """One true kernel cropped to its own ``size x size``."""
        from kernels_gpu.kernels import fit_size

        return fit_size(np.asarray(self.array("kernels")[int(index)]), size)

    def disk_usage(self) -> dict[str, int]:
        """Bytes on disk per top-level entry of the store."""
        usage: dict[str, int] = {}
        for path, info in self.fs.find(self.root, detail=True).items():
            top = posixpath.relpath(path, self.root).split("/")[0]
            usage[top] = usage.get(top, 0) + int(info.get("size") or 0)
        return usage
