"""Ray execution: the one package that touches Ray's actor, task and ``map_batches`` APIs.

One module per consumer: :mod:`.labelling` (``label``'s pool of labelling actors),
:mod:`.training_input` (``train``'s Ray Data input) and :mod:`.jobs` (``evaluate``'s independent
jobs); :mod:`.cluster` joins or starts Ray and sizes a pool of workers for each of them.

Inside this package ``import ray`` is Ray itself (imports are absolute); this package is
``pipeline.ray``, whose modules are imported by their full name (``from pipeline.ray.labelling
import run_labels``).
"""
