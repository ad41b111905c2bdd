"""The writer locks of a store: :meth:`Store.lock <pipeline.store.Store.lock>` and who holds one.

One ``synth``/``ingest`` at a time per store (``STORE/.lock``) and one ``label`` at a time per
estimator (``STORE/.lock-label-<id>``).  On a filesystem (local, NFS) the lock is ``fcntl.flock``
on that file, which the kernel releases when its process dies, even by SIGKILL; on an object store
(S3, GCS ...) it is a lease object ``STORE/.lock*.json`` with owner, host and expiry, created
conditionally where the store supports it and renewed while held; an expired lease is taken over.
The lock files are removed on release.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from .files import InputError

if TYPE_CHECKING:
    from .store import Store

__all__ = ["LEASE_SECONDS", "LOCK_PREFIX", "StoreBusy", "describe_holder", "hold"]

log = logging.getLogger(__name__)

#: names of lock files and leases start with this; they are not part of the store's data
LOCK_PREFIX = ".lock"
#: a lease on an object store lasts this long unless its holder renews it (every third of it)
LEASE_SECONDS = 60.0


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


#: locks this process holds, per thread: (url, name) -> depth, so a holder may take its own lock again
_held = threading.local()


@contextlib.contextmanager
def hold(
    store: Store, name: str = "", *, wait: bool = False, command: str = "", lease_seconds: float = LEASE_SECONDS
) -> Iterator[None]:
    """Hold the writer lock ``name`` of ``store``: the lock of :meth:`Store.lock <pipeline.store.Store.lock>`."""
    key = (store.url, name)
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
    release = (_flock if store.is_local else _lease)(store, relative, holder, wait, lease_seconds)
    depth[key] = 1
    try:
        yield
    finally:
        depth.pop(key, None)
        release()


def _wait_or_raise(store: Store, holder: dict, wait: bool, announced: list) -> None:
    if not wait:
        raise StoreBusy(store.url, holder)
    if not announced:
        log.warning("%s is being written by %s; waiting for it", store.url, describe_holder(holder))
        announced.append(True)
    time.sleep(0.2)


def _flock(store: Store, relative: str, holder: dict, wait: bool, lease_seconds: float) -> Callable[[], None]:
    import fcntl

    if store.fs.isfile(store.root):
        raise InputError(f"{store.url}: is a file, not a goodregions store")
    created_root = not store.fs.exists(store.root)
    os.makedirs(store.root, exist_ok=True)
    path = store.path(relative)
    announced: list = []
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            previous = _read_holder(fd)
            os.close(fd)
            _wait_or_raise(store, previous, wait, announced)
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
        log.warning("%s: taking over the lock of %s, no longer running", store.url, describe_holder(previous))
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(holder).encode(), 0)

    def release() -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)  # closing releases the flock
        if created_root:  # a run that wrote nothing leaves no folder behind
            with contextlib.suppress(OSError):
                os.rmdir(store.root)

    return release


def _lease(store: Store, relative: str, holder: dict, wait: bool, lease_seconds: float) -> Callable[[], None]:
    path = store.path(relative + ".json")
    token = uuid.uuid4().hex

    def body() -> bytes:
        return json.dumps({**holder, "token": token, "expires": time.time() + lease_seconds}).encode()

    def current() -> dict | None:
        try:
            return json.loads(store.fs.cat_file(path))
        except FileNotFoundError:
            return None
        except (ValueError, UnicodeDecodeError):  # a torn or foreign object: treat as expired
            return {}
        except Exception as exc:  # credentials, permissions, network: one line, not the backend's traceback
            raise store.access_error(exc) from None

    announced: list = []
    while True:
        try:
            store.fs.pipe_file(path, body(), mode="create")  # conditional where the store supports it
        except Exception:  # exists (FileExistsError, or a precondition failure the backend reports its way)
            lease = current()
            if lease is None:
                continue
            if lease.get("expires", 0) < time.time():
                log.warning("%s: taking over an expired lease of %s", store.url, describe_holder(lease))
                with contextlib.suppress(FileNotFoundError):
                    store.fs.rm(path)
                continue
            _wait_or_raise(store, lease, wait, announced)
            continue
        store.fs.invalidate_cache(path)
        if (current() or {}).get("token") == token:  # a backend without conditional writes: the last one wins
            break
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(lease_seconds / 3):
            lease = current()
            if not lease or lease.get("token") != token:
                log.error("%s: lost the lease %s", store.url, path)
                return
            store.fs.pipe_file(path, body())

    thread = threading.Thread(target=renew, name=f"lease {path}", daemon=True)
    thread.start()

    def release() -> None:
        stop.set()
        thread.join()
        if (current() or {}).get("token") == token:
            with contextlib.suppress(FileNotFoundError):
                store.fs.rm(path)

    return release


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        return json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (ValueError, UnicodeDecodeError, OSError):
        return {}
