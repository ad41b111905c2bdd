"""Where a store's files are: the fsspec filesystem and root of its URL, paths there, bytes in and out."""

from __future__ import annotations

import posixpath
import uuid
from functools import cached_property

import fsspec
import numpy as np

from .files import InputError
from .store_locks import LOCK_PREFIX

__all__ = ["StoreFiles"]


class StoreFiles:
    """A store's files by URL: the base of :class:`~pipeline.store.Store` (see there).

    Only the URL is kept, and pickled; the filesystem is resolved on first use.
    """

    def __init__(self, url: str) -> None:
        self.url = str(url)

    def __getstate__(self) -> dict:
        return {"url": self.url}

    def __setstate__(self, state: dict) -> None:
        self.url = state["url"]

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

        >>> from pipeline.store import Store
        >>> Store("/data/ds").fs.protocol
        ('file', 'local')
        """
        return self._fs_root[0]

    @property
    def root(self) -> str:
        """The store's root path on :attr:`fs` (no protocol, no trailing slash).

        >>> from pipeline.store import Store
        >>> Store("file:///data/ds/").root
        '/data/ds'
        """
        return self._fs_root[1]

    @property
    def is_local(self) -> bool:
        """Whether the store is on a filesystem (local, NFS): ``flock`` locks, Zarr's ``LocalStore``.

        >>> from pipeline.store import Store
        >>> Store("/data/ds").is_local, Store("memory://ds").is_local
        (True, False)
        """
        return "file" in np.atleast_1d(self.fs.protocol)

    def path(self, *parts: str) -> str:
        """The path on :attr:`fs` of ``parts`` inside the store.

        >>> from pipeline.store import Store
        >>> Store("/data/ds").path("blurred", "450x450")
        '/data/ds/blurred/450x450'
        """
        return posixpath.join(self.root, *parts)

    def exists(self, *parts: str) -> bool:
        """Whether ``parts`` exists inside the store; a store that cannot be reached is an :class:`InputError`.

        >>> from pipeline.store import Store
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

        >>> from pipeline.store import Store
        >>> print(Store("s3://bucket/ds").access_error(PermissionError("Access Denied")))
        s3://bucket/ds: cannot access the store (PermissionError: Access Denied)
        """
        name = type(exc).__name__
        hint = "; set AWS credentials (e.g. AWS_ACCESS_KEY_ID) or a profile" if "Credentials" in name else ""
        text = str(exc).strip().splitlines()
        return InputError(f"{self.url}: cannot access the store ({name}: {text[0] if text else name}){hint}")

    def write_bytes(self, relative: str, data: bytes) -> None:
        """Write ``data`` to ``relative`` atomically: a temporary name, then a rename.

        >>> from pipeline.store import Store
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

        >>> from pipeline.store import Store
        >>> import uuid
        >>> store = Store(f"memory://example-{uuid.uuid4().hex}")  # lives in this process only
        >>> store.write_bytes("notes/a.txt", b"hello")
        >>> store.read_bytes("notes/a.txt")
        b'hello'
        """
        return self.fs.cat_file(self.path(relative))

    def disk_usage(self) -> dict[str, int]:
        """Bytes on disk per top-level entry of the store (lock files left out).

        >>> from pipeline.store import Store
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
