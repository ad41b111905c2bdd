"""Every table of the store: one pyarrow schema each, and the store's schema version.

A store records the schema version it was written with in ``manifest.json``.
A reader refuses a store from a newer version (it could not know what changed);
an older version is migrated or refused explicitly, never guessed at.
"""

from __future__ import annotations

import pyarrow as pa

#: bump when any table or array layout changes
SCHEMA_VERSION = 1

#: one row per image: ``images.parquet``
IMAGES = pa.schema(
    [
        pa.field("image_id", pa.int64(), nullable=False),
        pa.field("origin", pa.string(), nullable=False),  # "synth" or "ingest"
        pa.field("sharp_source", pa.string()),  # e.g. "builtin:camera", "file:im1.png"; null when unknown
        pa.field("kernel_source", pa.string(), nullable=False),  # e.g. "trajectory:seed=0,sizes=11:55#3", "file:k.npy"
        pa.field("blurred_source", pa.string()),  # ingest only: the blurred file's name
        pa.field("height", pa.int32(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("kernel_size", pa.int32(), nullable=False),
        pa.field("noise_sigma", pa.float32()),  # in [0, 1] units; null when unknown (real photographs)
        pa.field("seed", pa.int64()),  # the noise seed; null for ingested images
        pa.field("blurred_array", pa.string(), nullable=False),  # zarr path, e.g. "blurred/450x450"
        pa.field("blurred_index", pa.int64(), nullable=False),  # row of that array
        pa.field("sharp_array", pa.string()),  # e.g. "sharp/450x450"; null when unknown
        pa.field("sharp_index", pa.int64()),
        pa.field("kernel_index", pa.int64(), nullable=False),  # row of the "kernels" array
    ],
    metadata={"schema_version": str(SCHEMA_VERSION)},
)

#: one row per window: ``windows.parquet`` (derived from the images and the window grid)
WINDOWS = pa.schema(
    [
        pa.field("image_id", pa.int64(), nullable=False),
        pa.field("window_id", pa.int32(), nullable=False),
        pa.field("y", pa.int32(), nullable=False),
        pa.field("x", pa.int32(), nullable=False),
        pa.field("size", pa.int32(), nullable=False),
    ],
    metadata={"schema_version": str(SCHEMA_VERSION)},
)

#: one row per (image, window, estimator): ``labels/estimator=<id>/*.parquet``
LABELS = pa.schema(
    [
        pa.field("image_id", pa.int64(), nullable=False),
        pa.field("window_id", pa.int32(), nullable=False),
        pa.field("similarity", pa.float32(), nullable=False),
        pa.field("seconds", pa.float32(), nullable=False),  # the image's batch time / its window count
        pa.field("worker", pa.string(), nullable=False),
        pa.field("node", pa.string(), nullable=False),
        pa.field("device", pa.string(), nullable=False),  # "cpu" or "gpu"
    ],
    metadata={"schema_version": str(SCHEMA_VERSION)},
)


def empty(schema: pa.Schema) -> pa.Table:
    """A table with no rows and the given schema."""
    return schema.empty_table()
