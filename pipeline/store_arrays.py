"""The Zarr arrays of a store: pixels, kernels and estimates, one chunk per row (:class:`StoreArrays`)."""

from __future__ import annotations

import posixpath
from typing import Any

import numpy as np

from .files import InputError
from .store_files import StoreFiles

__all__ = ["StoreArrays"]


class StoreArrays(StoreFiles):
    """The Zarr arrays in a store's files: opening, growing, checking and undoing rows.

    The base of :class:`~pipeline.store.Store`; the arrays are the ``blurred/``, ``sharp/``,
    ``kernels`` and ``estimates/`` of its layout.
    """

    def zarr_store(self, read_only: bool = False) -> Any:
        """Zarr's storage of the store's arrays: ``LocalStore`` on a filesystem, else ``FsspecStore``.

        >>> from pipeline.store import Store
        >>> type(Store("/data/ds").zarr_store(read_only=True)).__name__, type(Store("memory://ds").zarr_store()).__name__
        ('LocalStore', 'FsspecStore')
        """
        import zarr

        if self.is_local:
            return zarr.storage.LocalStore(self.root, read_only=read_only)
        return zarr.storage.FsspecStore.from_url(self.url, read_only=read_only)

    def array(self, name: str, mode: str = "r") -> Any:
        """The zarr array ``name`` (e.g. ``"blurred/450x450"``).

        >>> from pipeline.store import Store
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

        >>> from pipeline.store import Store
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

        >>> from pipeline.store import Store
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

        >>> from pipeline.store import Store
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

        >>> from pipeline.store import Store
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

    def array_rows(self, name: str) -> int | None:
        """Rows of the zarr array ``name``, or None when there is no such array.

        >>> from pipeline.store import Store
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

        >>> from pipeline.store import Store
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

        >>> from pipeline.store import Store
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
