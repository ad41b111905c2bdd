"""How images enter a store (synth, ingest): :class:`NewImages` takes the rows, :func:`append_images` writes them."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from . import schema
from .files import InputError, is_no_space

if TYPE_CHECKING:
    from .store import Store

__all__ = ["NewImages", "append_images"]


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


def append_images(
    store: Store,
    new: NewImages,
    write_pixels: Callable[[dict[str, Any]], None],
    run: dict[str, Any],
    synth: dict[str, Any] | None = None,
) -> None:
    """The one way images enter ``store`` (``synth``, ``ingest``); call it holding the store's lock.

    That is :meth:`Store.lock <pipeline.store.Store.lock>`; :meth:`Store.append_images
    <pipeline.store.Store.append_images>` calls this.

    Grows the arrays ``new.arrays`` names to the rows it took, calls ``write_pixels(opened
    arrays by name)``, writes the images table (``new.images`` + ``new.rows``) and the windows
    table that make the new rows visible, then records ``run`` (and the ``synth`` settings) in
    the manifest.  Until the tables are written nothing of this is visible; if that point is
    not reached (a full disk, an interrupt) the chunks written for the new rows are removed
    again, so no chunk is left that no row points to.  A full disk ends in an
    :class:`InputError` that says so.

    >>> from pipeline.store import Store
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
    ...     append_images(store, new, write_pixels, {"command": "example"})
    >>> store.images().num_rows, store.windows().num_rows, store.manifest()["runs"]
    (1, 4, [{'command': 'example', 'images_added': 1}])
    >>> import errno
    >>> def full_disk(arrays):  # a second run, whose pixels do not fit
    ...     arrays["blurred/16x16"][1] = np.zeros((16, 16))
    ...     raise OSError(errno.ENOSPC, "No space left on device")
    >>> more = NewImages(store.images())
    >>> _ = more.add("ingest", sharp_source=None, kernel_source="file:kernels/k1.npy",
    ...              blurred=("blurred/16x16", more.take("blurred/16x16", (16, 16))), sharp=None, kernel_size=3)
    >>> append_images(store, more, full_disk, {"command": "second"})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    pipeline.files.InputError: memory://example-...: no space left on device; none of this run's 1 images ...
    >>> store.images().num_rows, store.array_rows("blurred/16x16"), sorted(store.chunk_rows("blurred/16x16"))
    (1, 1, [0])
    """
    images, rows, arrays = new.images, new.rows, new.arrays
    before = {name: store.array_rows(name) for name in arrays}
    tables = False
    try:
        opened = {name: store.ensure_array(name, n, shape) for name, (n, shape) in arrays.items()}
        write_pixels(opened)
        tables = True
        store.write_images(pa.concat_tables([images, pa.Table.from_pylist(rows, schema=schema.IMAGES)]))
    except BaseException as exc:
        with contextlib.suppress(Exception):  # best effort: the original error is the one to report
            store.discard_rows(before)
            if tables:  # the windows table may already describe the new rows
                store.write_images(images)
        if is_no_space(exc):
            raise InputError(
                f"{store.url}: no space left on device; none of this run's {len(rows)} images were committed "
                f"(the store holds its {images.num_rows} images as before) and the chunks written for them "
                "were removed"
            ) from None
        raise
    manifest = store.manifest()
    if synth is not None:
        manifest["synth"] = {**(manifest.get("synth") or {}), **synth}
    manifest["runs"] = [*manifest.get("runs", []), {**run, "images_added": len(rows)}]
    try:
        store.write_manifest(manifest)
    except OSError as exc:
        if not is_no_space(exc):
            raise
        raise InputError(
            f"{store.url}: no space left on device after committing this run's {len(rows)} images (the store "
            f"holds {images.num_rows + len(rows)}); only the manifest's record of the run is missing"
        ) from None
