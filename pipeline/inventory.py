"""What a store holds: the numbers behind ``goodregions info``."""

from __future__ import annotations

from typing import Any

import pyarrow.compute as pc

from .store import Store


def store_info(url: str, threshold: float = 0.75) -> dict[str, Any]:
    """Counts, sizes and labelling progress of the store at ``url`` (JSON-serialisable)."""
    store = Store(url)
    manifest = store.manifest()
    images = store.images()
    windows = store.windows()
    origins = images["origin"].value_counts().to_pylist() if images.num_rows else []
    shapes = sorted(
        {f"{h}x{w}" for h, w in zip(images["height"].to_pylist(), images["width"].to_pylist(), strict=True)}
    )
    sizes = images["kernel_size"]
    summary: dict[str, Any] = {
        "url": store.url,
        "schema_version": manifest["schema_version"],
        "package_version": manifest.get("package_version"),
        "window": manifest["window"],
        "images": images.num_rows,
        "images_by_origin": {o["values"]: o["counts"] for o in origins},
        "image_sizes": shapes,
        "windows": windows.num_rows,
        "kernels": len(set(images["kernel_index"].to_pylist())),
        "kernel_sizes": f"{pc.min(sizes).as_py()}-{pc.max(sizes).as_py()}" if images.num_rows else "-",
        "sharp_images": len(
            {
                (a, i)
                for a, i in zip(images["sharp_array"].to_pylist(), images["sharp_index"].to_pylist(), strict=True)
                if a
            }
        ),
        "disk_bytes": store.disk_usage(),
        "runs": len(manifest.get("runs", [])),
    }
    return summary
