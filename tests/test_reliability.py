"""Reliability as a user meets it: concurrent writers, killed runs, full disks, corrupt files, bad input.

One test (or a few) per situation of the README's reliability section; each runs the command line
on a tiny store (8 images of 96 px, 4 windows each) and checks the property itself: exact row
counts and no duplicate key, every image kept, a stale lock taken over, a broken shard set aside
and only its images relabelled, one ``Error: <file or option>: <problem>`` line with exit status 1.

Commands that need real concurrency or Ray run as subprocesses (their own Ray, as a user's would);
the others through click's CliRunner, with Ray forbidden (:func:`no_ray`): they must fail before it.
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid

import numpy as np
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from kernels_gpu.backend import gpu_available
from pipeline.estimate import get_estimator
from pipeline.files import InputError, atomic_path
from pipeline.labels import label_dir, plan_labels, read_labels, write_estimator_description, write_shard
from pipeline.store import Store
from pipeline.store_locks import StoreBusy
from tests.raytools import ROOT
from tests.stores import cli, ok, one_line_error, snapshot

#: the tiny store: 8 builtin pictures x 2 kernels, 96 px, windows of 64 px at stride 16 (2 x 2 per image)
TINY = [
    "--size", 96, "--margin", 8, "--fit", "resize", "--window", 64, "--stride", 16,
    "--num-kernels", 2, "--kernel-sizes", "7:13", "--workers", 1, "-q",
]  # fmt: skip
IMAGES, WINDOWS_PER_IMAGE = 8, 4
WINDOWS = IMAGES * WINDOWS_PER_IMAGE
ESTIMATOR = get_estimator("l0grad")
#: Ray for the labelling subprocesses: a share of the 2 CPUs each, so two runs fit side by side
RAY_SHARE = ["--cpus-per-worker", "0.5"]


# --------------------------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory) -> pathlib.Path:
    store = tmp_path_factory.mktemp("tiny") / "store"
    ok("synth", store, *TINY, "--pairs", IMAGES)
    return store


@pytest.fixture
def store(tiny_store, tmp_path) -> pathlib.Path:
    """A fresh copy of the tiny store for one test."""
    copy = tmp_path / "store"
    shutil.copytree(tiny_store, copy)
    return copy


@pytest.fixture(autouse=True)
def no_ray(monkeypatch):
    """In-process commands must fail (or finish) without Ray: starting it here is a test failure."""
    import pipeline.ray.cluster

    def refuse(*args, **kwargs):
        raise AssertionError("Ray was started: the command should have stopped before")

    monkeypatch.setattr(pipeline.ray.cluster, "init_ray", refuse)


def env(**extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        **extra,
    }


def command(*args: object) -> list[str]:
    """The ``goodregions`` command line as a user runs it, in its own process."""
    return [sys.executable, "-c", "from goodregions.cli import main; main()", *map(str, args)]


def run(*args: object, timeout: float = 300, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(command(*args), env=env(**extra), capture_output=True, text=True, timeout=timeout)


def one_error_line(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """A subprocess that ended with exit 1 and one line ``Error: ...`` holding ``needles``; no traceback."""
    text = proc.stdout + proc.stderr
    assert proc.returncode == 1, text
    assert "Traceback" not in text, text
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), text
    for needle in needles:
        assert needle in lines[0], text
    return lines[0]


def fake_labels(store: pathlib.Path, shards: list[list[int]], worker: str = "earlier run") -> None:
    """Publish label shards as ``label`` does (rows, then done marker), without Ray.

    Similarity alternates 0.9 / 0.3 over the windows, so both labels occur at 0.75.
    """
    target = Store(str(store))
    write_estimator_description(target, ESTIMATOR)
    for s, ids in enumerate(shards):
        results = [
            {
                "image_id": i,
                "similarity": np.array([0.9 if (i + w) % 2 else 0.3 for w in range(WINDOWS_PER_IMAGE)]),
                "seconds": 0.1,
                "worker": worker,
                "node": "node",
                "device": "cpu",
            }
            for i in ids
        ]
        name = f"shard-{s:06d}-{uuid.uuid4().hex[:10]}"
        write_shard(target, ESTIMATOR.id, name, results, {"run": worker, "started": 1.0, "finished": 2.0})


def labels_folder(store: pathlib.Path) -> pathlib.Path:
    return store / label_dir(ESTIMATOR.id)


def assert_each_window_once(store: pathlib.Path) -> None:
    """Exactly images x windows rows, no duplicate key, through the API and through plain pyarrow."""
    table = read_labels(Store(str(store)), ESTIMATOR.id)
    keys = set(zip(table["image_id"].to_pylist(), table["window_id"].to_pylist(), strict=True))
    assert table.num_rows == len(keys) == WINDOWS
    assert keys == {(i, w) for i in range(IMAGES) for w in range(WINDOWS_PER_IMAGE)}
    plain = ds.dataset(str(store / "labels"), format="parquet", partitioning="hive").to_table()
    assert plain.num_rows == WINDOWS  # the files themselves hold no second copy


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the run ended (exit {proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


# ---------------------------------------------------------------- 1. concurrent label runs, a SIGKILL


def test_concurrent_label_runs_then_a_sigkill_label_each_window_once(store, tmp_path):
    """Issue item 1: runs with --shard-images 1 and 3 on one store: one writes, one stops, one waits.

    The writer is SIGKILLed mid-run; the waiting run detects the stale lock, takes it over and
    finishes exactly the images the killed run left: every window once, no duplicate row.
    """
    lock = store / f".lock-label-{ESTIMATOR.id}"
    done = labels_folder(store) / "_done"
    first = subprocess.Popen(
        command("label", store, "-q", "--shard-images", 1, "--workers", 1, *RAY_SHARE),
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its Ray processes share its process group: one SIGKILL ends them all
    )
    waiting_log = tmp_path / "waiting.err"
    waiting = None
    try:
        wait_for(lambda: lock.exists() and str(first.pid) in lock.read_text(), 60, "the first run's lock", first)

        busy = run("label", store, "-q", "--shard-images", 3, *RAY_SHARE)
        line = one_error_line(busy, f"Error: {store} is being written by pid {first.pid}/", "(use --wait)")
        assert f"label {ESTIMATOR.id}" in line and " since " in line

        with open(waiting_log, "w") as err:
            waiting = subprocess.Popen(
                command("label", store, "-q", "--shard-images", 3, "--wait", "--workers", 1, *RAY_SHARE),
                env=env(),
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                start_new_session=True,
            )
        wait_for(lambda: "waiting for it" in waiting_log.read_text(), 60, "the second run to wait", waiting)
        wait_for(lambda: len(list(done.glob("*.json"))) >= 2, 120, "two shards of the first run", first)
    except BaseException:
        if waiting is not None and waiting.poll() is None:
            os.killpg(waiting.pid, signal.SIGKILL)
        raise
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    # what the killed run published: whole shard files (renamed into place), with or without their marker yet
    shards = labels_folder(store).glob("shard-*.parquet")
    finished = {i for shard in shards for i in pq.read_table(shard, columns=["image_id"])["image_id"].to_pylist()}
    assert 2 <= len(finished) < IMAGES, "the first run finished before it could be killed"

    try:
        out, _ = waiting.communicate(timeout=300)
    finally:
        if waiting.poll() is None:  # a failed test leaves no run behind
            os.killpg(waiting.pid, signal.SIGKILL)
            waiting.wait()
    err = waiting_log.read_text()
    assert waiting.returncode == 0, out + err
    assert f"taking over the lock of pid {first.pid}/" in err  # the SIGKILLed run's lock, detected as stale
    assert f"({len(finished) * WINDOWS_PER_IMAGE} already done)" in out
    assert_each_window_once(store)
    assert not lock.exists()
    status = ok("status", store).output
    assert f"{WINDOWS}/{WINDOWS} windows (100.0 %)" in status and "duplicate" not in status


def test_readers_count_each_key_once_in_a_store_with_duplicates(store):
    """Issue item 1: a store labelled twice (by versions without the lock) holds 2 rows per window.

    status reports 100 %, not 200 %, and names the duplicates; train's index has each window once.
    """
    from training.data import build_index

    fake_labels(store, [[i] for i in range(IMAGES)])  # --shard-images 1
    fake_labels(store, [[0, 1, 2], [3, 4, 5], [6, 7]])  # --shard-images 3, run at the same time
    plain = ds.dataset(str(store / "labels"), format="parquet", partitioning="hive").to_table()
    assert plain.num_rows == 2 * WINDOWS

    text = ok("status", store).output
    assert f"{WINDOWS}/{WINDOWS} windows (100.0 %)" in text
    assert f"{WINDOWS} duplicate rows" in text
    summary = json.loads(ok("status", store, "--json").output)[0]
    assert (summary["done"], summary["total"], summary["duplicate_rows"]) == (WINDOWS, WINDOWS, WINDOWS)
    assert f"{WINDOWS}/{WINDOWS} windows" in ok("info", store).output

    index = build_index(Store(str(store)), ESTIMATOR.id, 0.75)
    windows = [w for ids in index["window_id"].to_pylist() for w in ids]
    assert index.num_rows == IMAGES and len(windows) == WINDOWS
    assert all(sorted(ids) == list(range(WINDOWS_PER_IMAGE)) for ids in index["window_id"].to_pylist())


def test_object_store_lease_is_busy_while_held_and_taken_over_once_expired():
    """Issue item 1 on object stores: the lock is a lease object with holder and expiry (memory:// here)."""
    import fsspec

    url = f"memory://reliability-{uuid.uuid4().hex}"
    store = Store(url)
    holder = {"pid": 4242, "host": "node7", "since": time.time(), "command": "label l0grad", "token": "other"}
    try:
        store.write_bytes(".lock-label-x.json", json.dumps({**holder, "expires": time.time() + 60}).encode())
        with pytest.raises(StoreBusy, match=r"being written by pid 4242/node7 since .* \(label l0grad\)"):
            with store.lock("label-x"):
                pass
        store.write_bytes(".lock-label-x.json", json.dumps({**holder, "expires": time.time() - 1}).encode())
        with store.lock("label-x", command="label mine"):  # the holder stopped renewing it: taken over
            lease = json.loads(store.read_bytes(".lock-label-x.json"))
            assert lease["pid"] == os.getpid() and lease["command"] == "label mine"
        assert not store.exists(".lock-label-x.json")
    finally:
        fs = fsspec.filesystem("memory")
        if fs.exists(store.root):
            fs.rm(store.root, recursive=True)


# ------------------------------------------------------------------------------ 2. concurrent synth


def test_concurrent_synth_runs_keep_every_image(tmp_path):
    """Issue item 2: two synth runs into one new store at once: the second waits; no image is lost."""
    store = tmp_path / "store"

    def synth(seed: int) -> subprocess.Popen:
        return subprocess.Popen(
            command("synth", store, *TINY, "--pairs", IMAGES, "--seed", seed, "--wait"),
            env=env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    first = synth(1)
    lock = store / ".lock"
    wait_for(lambda: lock.exists() and str(first.pid) in lock.read_text(), 60, "the first run's lock", first)
    second = synth(2)
    outputs = [p.communicate(timeout=120) for p in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], outputs
    assert f"is being written by pid {first.pid}/" in outputs[1][1] and "waiting for it" in outputs[1][1]
    assert f"now holds {2 * IMAGES} images" in outputs[1][0]

    images = Store(str(store)).images()
    assert images.num_rows == 2 * IMAGES
    assert sorted(images["image_id"].to_pylist()) == list(range(2 * IMAGES))
    pairs = set(zip(images["sharp_source"].to_pylist(), images["kernel_source"].to_pylist(), strict=True))
    assert len(pairs) == 2 * IMAGES
    assert {k.split("#")[0] for k in images["kernel_source"].to_pylist()} == {
        f"trajectory:seed={s},sizes=7:13" for s in (1, 2)
    }
    blurred = set(zip(images["blurred_array"].to_pylist(), images["blurred_index"].to_pylist(), strict=True))
    assert len(blurred) == 2 * IMAGES  # no two images share pixels
    check = ok("info", store, "--check").output
    assert f"every pixel of the {2 * IMAGES} images reads and is finite" in check
    assert "no table row points to" not in check


# ------------------------------------------------------------------------- 3. a table that is garbage


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_images_table_that_is_not_parquet_is_one_line_everywhere(store, model_dir, tmp_path, damage):
    """Issue item 3: every command that reads images.parquet names it in one line; nothing is written."""
    fake_labels(store, [list(range(IMAGES))])  # so that train gets as far as reading the images
    table = store / "images.parquet"
    table.write_bytes(b"garbage\n" if damage == "garbage" else table.read_bytes()[: table.stat().st_size // 2])
    before = snapshot(store)
    needle = f"Error: {store}/images.parquet: not a Parquet file ("
    for args in [
        ("info", store),
        ("info", store, "--check"),
        ("status", store),
        ("label", store, "-q"),
        ("train", store, "-e", "l0grad", "-o", tmp_path / "model"),
        ("synth", store, *TINY, "--pairs", 2),
        ("evaluate", store, "-m", model_dir, "-o", tmp_path / "eval", "--selectors", "cnn", "-e", "l0grad"),
    ]:
        one_line_error(cli(*args), needle)
    assert snapshot(store) == before
    assert not (tmp_path / "model").exists() and not (tmp_path / "eval").exists()


# ------------------------------------------------------------------------------ 4. a broken shard


def test_truncated_labels_shard_is_named_set_aside_and_only_its_images_relabelled(store, tmp_path):
    """Issue item 4: status names the broken shard, train refuses it in one line, label relabels its images."""
    fake_labels(store, [[0, 1, 2], [3, 4, 5], [6, 7]])
    shard = next(p for p in labels_folder(store).glob("shard-000001-*.parquet"))
    original = pq.read_table(shard)
    assert sorted(set(original["image_id"].to_pylist())) == [3, 4, 5]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    broken_bytes = shard.read_bytes()

    status = ok("status", store).output
    assert f"{WINDOWS - 12}/{WINDOWS} windows" in status
    assert f"broken shard {shard}: not a readable Parquet file" in status
    one_line_error(
        cli("train", store, "-e", "l0grad", "-o", tmp_path / "model"), f"Error: {shard}: broken labels shard"
    )
    assert not (tmp_path / "model" / "model.pt").exists()
    check = cli("info", store, "--check")
    assert check.exit_code == 1 and f"broken labels shard {shard}" in check.output

    relabel = run("label", store, "-q", *RAY_SHARE, "--workers", 1)
    assert relabel.returncode == 0, relabel.stdout + relabel.stderr
    assert f"12 windows of 3 images to label in 1 shards ({WINDOWS - 12} already done)" in relabel.stdout
    aside = labels_folder(store) / "_broken" / shard.name
    assert f"{shard}:" in relabel.stderr and str(aside) in relabel.stderr  # the user is told where it went
    assert aside.read_bytes() == broken_bytes and not shard.exists()

    assert_each_window_once(store)
    table = read_labels(Store(str(store)), ESTIMATOR.id)
    by_image = {}
    for image_id, worker in zip(table["image_id"].to_pylist(), table["worker"].to_pylist(), strict=True):
        by_image.setdefault(image_id, set()).add(worker)
    assert {i for i, w in by_image.items() if w == {"earlier run"}} == {0, 1, 2, 6, 7}  # untouched
    assert all("earlier run" not in by_image[i] for i in (3, 4, 5))  # computed again, by this run
    status = ok("status", store).output
    assert f"{WINDOWS}/{WINDOWS} windows (100.0 %)" in status and "broken" not in status


def test_shard_with_fewer_rows_than_its_marker_is_broken_too(store):
    """Issue item 4: a shard that reads but lacks rows its done marker counts is set aside; its images replanned."""
    import pyarrow as pa

    fake_labels(store, [[0, 1, 2], [3, 4, 5], [6, 7]])
    shard = next(p for p in labels_folder(store).glob("shard-000001-*.parquet"))
    table = pq.read_table(shard)
    pq.write_table(table.filter(pa.compute.equal(table["image_id"], 3)), shard)  # 4 of its 12 rows

    status = ok("status", store).output
    assert f"broken shard {shard}: holds 4 rows, its done marker says 12" in status
    assert f"{WINDOWS - 12}/{WINDOWS} windows" in status  # its rows are not counted
    plan = plan_labels(Store(str(store)), ESTIMATOR, 8)  # what label plans (no Ray needed to see it)
    assert sorted(j.image_id for _, jobs in plan.shards for j in jobs) == [3, 4, 5]
    assert (labels_folder(store) / "_broken" / shard.name).exists() and not shard.exists()


# ---------------------------------------------------------------------- 5. a missing or corrupt chunk


@pytest.mark.parametrize("damage", ["deleted", "corrupt"])
def test_missing_or_corrupt_blurred_chunk_is_found_and_train_refuses(store, tmp_path, damage):
    """Issue item 5: info --check names the image; train stops with one line and writes no model."""
    fake_labels(store, [list(range(IMAGES))])
    images = Store(str(store)).images().to_pylist()
    row = next(r for r in images if r["image_id"] == 3)
    chunk = store / row["blurred_array"] / "c" / str(row["blurred_index"]) / "0" / "0"
    if damage == "deleted":
        chunk.unlink()
    else:
        chunk.write_bytes(b"not a zstd chunk")

    check = cli("info", store, "--check")
    assert check.exit_code == 1 and "Traceback" not in check.output
    problem = "missing" if damage == "deleted" else "does not decode"
    assert f"image 3: blurred pixels ({row['blurred_array']} row {row['blurred_index']}) {problem}" in check.output
    assert check.output.rstrip().splitlines()[-1].startswith(f"Error: {store}: 1 images with missing or unreadable")

    out = tmp_path / "model"
    reason = "missing or not finite" if damage == "deleted" else "do not read"
    one_line_error(
        cli("train", store, "-e", "l0grad", "-o", out, "--epochs", 1), f"Error: image 3: blurred pixels {reason} ("
    )
    assert not (out / "model.pt").exists()


# ----------------------------------------------------------------------- 6. bad input, one line each


@pytest.mark.skipif(gpu_available(), reason="this machine has a GPU")
def test_label_on_gpu_without_one_stops_before_ray(store):
    """Issue item 6: --device gpu on a machine without a GPU: one line, before Ray starts (no_ray)."""
    before = snapshot(store)
    one_line_error(cli("label", store, "--device", "gpu"), "Error: --device: gpu requested")
    assert snapshot(store) == before


def test_train_with_garbage_init_weights_stops_before_ray(store, tmp_path):
    """Issue item 6: --init-weights that is not a state dict: one line naming it, before Ray (no_ray)."""
    fake_labels(store, [list(range(IMAGES))])
    weights = tmp_path / "resnet34.pth"
    weights.write_bytes(b"garbage")
    out = tmp_path / "model"
    train = cli("train", store, "-e", "l0grad", "-o", out, "--init-weights", weights)
    one_line_error(train, "Error: --init-weights: ", str(weights))
    assert not (out / "model.pt").exists()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> pathlib.Path:
    """A model folder as train writes it (untrained weights: select only needs them to load)."""
    import torch

    from training.model import build_model

    folder = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    torch.save(build_model().state_dict(), folder / "model.pt")
    info = {"format": "goodregions window classifier", "arch": "window", "window": 64, "stride": 32}
    (folder / "model.json").write_text(json.dumps({**info, "estimator": ESTIMATOR.id}))
    return folder


SELECT = ["builtin:camera", "-e", "l0grad", "-k", 15]


@pytest.mark.parametrize(
    "damage, file, needle",
    [
        ("truncated", "model.pt", "not a window classifier's weights"),
        ("garbage", "model.pt", "not a window classifier's weights"),
        ("truncated", "model.json", "not a goodregions model description"),
    ],
)
def test_select_with_a_broken_model_file(model_dir, tmp_path, damage, file, needle):
    """Issue item 6: a truncated or garbage model file: one line naming it; no output written."""
    model = tmp_path / "model"
    shutil.copytree(model_dir, model)
    data = (model / file).read_bytes()
    (model / file).write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\x00garbage")
    out = tmp_path / "out"
    one_line_error(cli("select", *SELECT, "-m", model, "-o", out), f"Error: {model / file}: {needle}")
    assert not out.exists()


@pytest.mark.parametrize("contents", ['{"window": 64, "str', "[1, 2]", '{"window": "big", "stride": 32}'])
def test_evaluate_with_a_corrupt_model_json(model_dir, store, tmp_path, contents):
    """Issue item 6: evaluate names model.json in one line; no output written."""
    model = tmp_path / "model"
    shutil.copytree(model_dir, model)
    (model / "model.json").write_text(contents)
    out = tmp_path / "eval"
    result = cli("evaluate", store, "-m", model, "-o", out, "--selectors", "cnn,whole", "-e", "l0grad")
    one_line_error(result, f"Error: {model / 'model.json'}: not a goodregions model description (")
    assert not out.exists()


STORE_COMMANDS = [
    ("synth", "{url}", *TINY, "--pairs", 2),
    ("info", "{url}"),
    ("info", "{url}", "--check"),
    ("status", "{url}"),
    ("label", "{url}"),
    ("train", "{url}", "-e", "l0grad", "-o", "{tmp}/model"),
    ("evaluate", "{url}", "-m", "{model}", "-o", "{tmp}/eval", "--selectors", "cnn", "-e", "l0grad"),
]

STORE_COMMAND_IDS = ["synth", "info", "info-check", "status", "label", "train", "evaluate"]


def _args(args: tuple, url: str, tmp: pathlib.Path, model: pathlib.Path) -> list[str]:
    return [str(a).format(url=url, tmp=tmp, model=model) for a in args]


@pytest.mark.parametrize("args", STORE_COMMANDS, ids=STORE_COMMAND_IDS)
def test_unknown_store_protocol_is_one_line(args, model_dir, tmp_path):
    """Issue item 6: bogus://... is an unknown protocol, named in one line by every command."""
    one_line_error(cli(*_args(args, "bogus://bucket/ds", tmp_path, model_dir)), "Error: bogus://bucket/ds: unknown")


@pytest.fixture
def no_aws_credentials(monkeypatch, tmp_path):
    """No AWS credentials anywhere botocore looks (environment, files, instance metadata); a bogus endpoint."""
    s3fs = pytest.importorskip("s3fs")
    for name in ("ACCESS_KEY_ID", "SECRET_ACCESS_KEY", "SESSION_TOKEN", "PROFILE", "DEFAULT_PROFILE"):
        monkeypatch.delenv(f"AWS_{name}", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    s3fs.S3FileSystem.clear_instance_cache()  # no filesystem made earlier with other settings
    yield
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.mark.parametrize("args", STORE_COMMANDS, ids=STORE_COMMAND_IDS)
def test_s3_without_credentials_is_one_line(args, model_dir, tmp_path, no_aws_credentials):
    """Issue item 6: s3:// without credentials: one line that says so, from every command, within seconds.

    botocore finds no credentials before it tries any connection, so nothing waits on the network.
    """
    start = time.monotonic()
    result = cli(*_args(args, "s3://goodregions-no-bucket/ds", tmp_path, model_dir))
    one_line_error(result, "Error: s3://goodregions-no-bucket/ds: cannot access the store (NoCredentialsError")
    assert time.monotonic() - start < 30


def _tmpfs(folder: pathlib.Path, size: str) -> pathlib.Path:
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.decode().strip()})")
    return folder


@pytest.fixture
def small_disk(tmp_path):
    """A folder on a tmpfs of a few hundred KiB (root only; the test is skipped where mount is refused)."""
    mounted = []

    def make(size: str) -> pathlib.Path:
        mounted.append(_tmpfs(tmp_path / f"disk{len(mounted)}", size))
        return mounted[-1]

    yield make
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_full_disk_during_synth_keeps_the_store_and_leaves_no_orphan_chunk(small_disk):
    """Issue item 6: synth runs out of space: one line, the store's files as they were, no orphan chunk."""
    store = small_disk("1m") / "store"
    ok("synth", store, *TINY, "--pairs", 4)
    before = snapshot(store)
    full = cli("synth", store, *TINY, "--pairs", 36)  # about 2 MiB of pixels
    line = one_line_error(full, f"Error: {store}: no space left on device; none of this run's 32 images")
    assert "holds its 4 images as before" in line
    assert snapshot(store) == before  # every existing file as it was, no chunk or temporary file left
    check = ok("info", store, "--check").output
    assert "every pixel of the 4 images reads and is finite" in check and "no table row points to" not in check


def test_full_disk_during_select_is_one_line_and_truncates_nothing(model_dir, small_disk):
    """Issue item 6: select runs out of space: one line naming the file; every file there is whole."""
    out = small_disk("150k") / "out"
    out.mkdir()
    (out / "notes.txt").write_text("the user's own file\n")
    result = cli("select", *SELECT, "-m", model_dir, "-o", out)
    line = one_line_error(result, f"Error: {out}/", "no space left on device")
    failed = pathlib.Path(line.removeprefix("Error: ").split(":")[0])
    assert not failed.exists()  # never half-written
    assert (out / "notes.txt").read_text() == "the user's own file\n"
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left
    if (out / "windows.json").exists():
        json.loads((out / "windows.json").read_text())  # whole, or absent


def test_synth_killed_mid_run_leaves_orphans_that_check_reports_and_fix_removes(store):
    """Issue item 6, kills: a SIGKILLed synth leaves chunks no row points to; the store is as before.

    info --check names them and exits 0 (the store is consistent), --check --fix removes them
    (taking over the dead run's lock), and the next synth completes the run.
    """
    blurred = store / "blurred" / "96x96" / "c"
    killed = subprocess.Popen(
        command("synth", store, *TINY, "--pairs", 36),
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for(lambda: (blurred / str(IMAGES + 3)).exists(), 60, "the new run's chunks", killed)
    finally:
        os.killpg(killed.pid, signal.SIGKILL)
        killed.wait()
    assert Store(str(store)).images().num_rows == IMAGES  # nothing of the killed run is visible

    check = ok("info", store, "--check").output
    assert f"every pixel of the {IMAGES} images reads and is finite" in check
    assert "files no table row points to" in check and "--check --fix removes them" in check
    fixed = ok("info", store, "--check", "--fix").output
    assert "removed" in fixed and "files no table row points to" in fixed
    rows = sorted(int(p.relative_to(blurred).parts[0]) for p in blurred.rglob("*") if p.is_file())
    assert rows == list(range(IMAGES))  # the chunk files of the stored images, and no other
    assert "no table row points to" not in ok("info", store, "--check").output

    ok("synth", store, *TINY, "--pairs", 36)
    assert Store(str(store)).images().num_rows == 36
    check = ok("info", store, "--check").output
    assert "every pixel of the 36 images reads and is finite" in check and "no table row points to" not in check


def test_atomic_path_names_the_file_on_a_full_disk_and_keeps_the_old_one(tmp_path):
    """Issue item 6, the common path of every output (select, train, evaluate, estimate)."""
    target = tmp_path / "result.json"
    target.write_text("old")
    with pytest.raises(InputError, match=f"^{target}: no space left on device"):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["result.json"]


# ------------------------------------------------------------------------------ 7. not a store


@pytest.mark.parametrize("kind", ["missing", "file", "empty folder", "folder without manifest"])
def test_a_path_that_is_not_a_store_is_refused_by_every_reader(tmp_path, kind):
    """Issue item 7: status, info, label and train agree: exit 1, 'not a goodregions store'; nothing made."""
    path = tmp_path / "notastore"
    if kind == "file":
        path.write_text("x")
    elif kind != "missing":
        path.mkdir()
        if kind == "folder without manifest":
            (path / "holiday.jpg").write_bytes(b"jpeg")
    before = snapshot(tmp_path)
    for args in [
        ("status", path),
        ("info", path),
        ("info", path, "--check"),
        ("label", path),
        ("train", path, "-e", "l0grad", "-o", tmp_path / "model"),
    ]:
        one_line_error(cli(*args), f"Error: {path}: not a goodregions store")
    assert snapshot(tmp_path) == before and path.exists() == (kind != "missing")


# ----------------------------------------------------------------------------- 8. the right option


def test_bad_values_name_their_option(store, tmp_path):
    """Issue item 8: --window 0 blames --window (not a kernel file); a non-finite --threshold is refused."""
    for window in (0, -3, 2):
        one_line_error(cli("synth", tmp_path / "new", *TINY, "--window", window), "Error: --window: must be >= 3 px")
    assert not (tmp_path / "new").exists()
    for value in ("nan", "inf", "-inf"):
        for args in [("status", store), ("info", store)]:
            one_line_error(cli(*args, "--threshold", value), "Error: --threshold: must be a finite number")
    fake_labels(store, [list(range(IMAGES))])
    one_line_error(cli("train", store, "-e", "l0grad", "-o", tmp_path / "m", "--threshold", "nan"), "--threshold")


# ---------------------------------------------------------------------------- 9. its own local Ray


def test_label_without_address_starts_its_own_ray_beside_another_cluster(store):
    """Issue item 9: a Ray cluster recorded on the machine (as ``ray start`` leaves it) is not joined.

    ``ray.init()`` alone would find it in ``$RAY_TMPDIR/ray/ray_current_cluster`` and refuse
    ``num_cpus``; without ``--address`` label starts its own instance and labels the store.
    """
    fake_labels(store, [list(range(IMAGES - 1))])  # one image left to label
    temp = pathlib.Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: Ray's socket paths have a limit
    try:
        (temp / "ray").mkdir()
        (temp / "ray" / "ray_current_cluster").write_text("127.0.0.1:6399")
        result = run("label", store, "-q", *RAY_SHARE, "--workers", 1, RAY_TMPDIR=str(temp))
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{WINDOWS_PER_IMAGE} windows of 1 images to label" in result.stdout
    assert_each_window_once(store)


# -------------------------------------------------------------------------------- 10. memory://


@pytest.mark.parametrize(
    "args",
    [
        ("train", "{url}", "-e", "l0grad", "-o", "{tmp}/model"),
        ("evaluate", "{url}", "-m", "{model}", "-o", "{tmp}/eval", "--selectors", "cnn", "-e", "l0grad"),
        ("ingest", "{url}", "--blurred", "{tmp}", "--kernels", "{tmp}"),
        ("info", "{url}", "--check"),
    ],
    ids=lambda a: a[0],
)
def test_memory_store_is_refused_by_the_commands_test_store_does_not_cover(args, model_dir, tmp_path):
    """Issue item 10 (synth, info, status and label: tests/test_store.py)."""
    result = cli(*_args(args, "memory://scratch/ds", tmp_path, model_dir))
    one_line_error(result, "Error: memory://scratch/ds: memory:// stores live only inside one Python process")


# ----------------------------------------------------------------------------- 11. file modes


def test_outputs_get_the_mode_of_the_users_umask(model_dir, tmp_path):
    """Issue item 11: files renamed into place get 0o666 & ~umask, as a new file would (not mkstemp's 0600)."""
    previous = os.umask(0o027)
    try:
        with atomic_path(tmp_path / "direct.json") as tmp:
            tmp.write_text("{}")
        out = tmp_path / "out"
        ok("select", *SELECT, "-m", model_dir, "-o", out)
    finally:
        os.umask(previous)
    assert (tmp_path / "direct.json").stat().st_mode & 0o777 == 0o640
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
    assert set(modes) == {"windows.json", "heatmap.png", "kernel.npy", "kernel.png", "deblurred.png"}
    assert set(modes.values()) == {0o640}, {k: oct(v) for k, v in modes.items()}
