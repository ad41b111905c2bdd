"""The ``goodregions`` command line.

Commands import their heavy dependencies lazily: ``goodregions estimate`` never imports Ray or
torch. Bad input ends with one line ``Error: <file or option>: <problem>`` and exit status 1
(usage errors that click finds itself, such as an unknown option, exit 2), never a traceback.
"""

from __future__ import annotations

import sys

import click

from . import data, demo, images, labelling, learn, regions
from ._shell import CONTEXT, OneLineErrors


@click.group(cls=OneLineErrors, context_settings=CONTEXT)
@click.version_option(package_name="goodregions", prog_name="goodregions")
def main() -> None:
    """goodregions: learn which image regions are good for blind kernel estimation.

    Synthesise blurred data, label every window with a blind kernel estimator
    (distributed on Ray), train a window classifier, and deblur new images from
    their best window.
    """


for command in (
    images.estimate,
    images.deblur,
    images.list_estimators,
    data.synth,
    data.ingest,
    data.info,
    labelling.label,
    labelling.status,
    learn.train,
    regions.select,
    regions.evaluate,
    demo.demo,
):
    main.add_command(command)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
