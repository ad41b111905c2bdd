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

__all__ = ["MANIFEST", "Store", "StoreBusy", "is_no_space", "persistent_store"]

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
#: names of lock files and leases start with this; they are not part of the store's data
LOCK_PREFIX = ".lock"
#: a lease on an object store lasts this long unless its holder renews it (every third of it)
LEASE_SECONDS = 60.0
#: the window grid a new store gets when none is asked for (the paper's)
DEFAULT_WINDOW, DEFAULT_STRIDE = 228, 20


def kernel_capacity(window: int) -> int:
    """Side of the stored kernels array for windows of ``window`` px: the largest odd kernel a window holds."""
    return window - 1 + window % 2


class StoreBusy(InputError):
    """Another writer holds the lock this run needs; ``holder`` says who (pid, host, since, command)."""

    def __init__(self, url: str, holder: dict[str, Any]) -> None:
        self.url, self.holder = url, holder
        super().__init__(f"{url} is being written by {describe_holder(holder)} (pass wait=True to wait for it)")


def describe_holder(holder: dict[str, Any]) -> str:
    since = holder.get("since")
    when = datetime.datetime.fromtimestamp(since, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if since else "?"
    what = f" ({holder['command']})" if holder.get("command") else ""
    return f"pid {holder.get('pid', '?')}/{holder.get('host', '?')} since {when}{what}"


def is_no_space(exc: BaseException | None) -> bool:
    """Whether ``exc`` or an exception it was raised from is a full disk (ENOSPC, EDQUOT)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def persistent_store(url: str) -> Store:
    """The store at ``url`` for a command: ``memory://`` is refused (it would vanish with the process)."""
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
        try:
            return self.fs.exists(self.path(*parts))
        except InputError:
            raise
        except Exception as exc:  # missing credentials, no such bucket, no network: the first access says so
            raise self.access_error(exc) from None

    def access_error(self, exc: BaseException) -> InputError:
        """A one-line error for a store that cannot be reached (credentials, permissions, network)."""
        name = type(exc).__name__
        hint = "; set AWS credentials (e.g. AWS_ACCESS_KEY_ID) or a profile" if "Credentials" in name else ""
        text = str(exc).strip().splitlines()
        return InputError(f"{self.url}: cannot access the store ({name}: {text[0] if text else name}){hint}")

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
        """Refuse a run whose window grid differs from the store's."""
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

    def append_images(
        self,
        images: pa.Table,
        rows: list[dict[str, Any]],
        arrays: dict[str, tuple[int, tuple[int, ...]]],
        write_pixels: Callable[[dict[str, Any]], None],
        run: dict[str, Any],
        synth: dict[str, Any] | None = None,
    ) -> None:
        """The one way images enter the store (``synth``, ``ingest``); call it holding :meth:`lock`.

        Grows ``arrays`` (name -> (rows, item shape)), calls ``write_pixels(opened arrays)``, writes
        the images table (``images`` + ``rows``) and the windows table that make the new rows
        visible, then records ``run`` (and the ``synth`` settings) in the manifest.  Until the
        tables are written nothing of this is visible; if that point is not reached (a full disk,
        an interrupt) the chunks written for the new rows are removed again, so no chunk is left
        that no row points to.  A full disk ends in an :class:`InputError` that says so.
        """
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
        """Rows of the zarr array ``name``, or None when there is no such array."""
        import zarr

        try:
            return int(self.array(name).shape[0])
        except (FileNotFoundError, KeyError, zarr.errors.ArrayNotFoundError, zarr.errors.NodeTypeValidationError):
            return None

    def chunk_rows(self, name: str) -> dict[int, list[str]]:
        """Chunk files of the array ``name`` by row (the first chunk index: one chunk per row)."""
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
        """Bytes on disk per top-level entry of the store (lock files left out)."""
        usage: dict[str, int] = {}
        for path, info in self.fs.find(self.root, detail=True).items():
            top = posixpath.relpath(path, self.root).split("/")[0]
            if not top.startswith(LOCK_PREFIX):
                usage[top] = usage.get(top, 0) + int(info.get("size") or 0)
        return usage


def check_window_grid(window: int, stride: int) -> None:
    """A window grid a store can have: windows of at least 3 px, a stride of at least 1 px."""
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
