"""The ``goodregions`` command line: a thin shell over ``kernels_gpu``, ``pipeline`` and ``training``.

It is the only package that imports all three layers (kernels_gpu <- pipeline <- training <-
goodregions). Each module holds one command group; ``goodregions.cli.main`` is the console script.
"""
