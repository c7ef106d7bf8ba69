"""``eeszt-gw bench``: benchmark scenarios. Each prints a table of figures measured in one run.

Not part of the product: a top-level package beside it, with its own dependencies (the bench
extra: ``pip install -e '.[bench]'``). Only the ``bench`` dispatcher of ``eeszt_gw.cli`` imports
it, when ``eeszt-gw bench`` runs; :mod:`benchmarks.cli` defines the scenarios' flags.
"""
