"""Side-by-side benchmark of the embedding pipeline; run it with ``python -m bench``.

Not part of the product: it starts its own stub API and worker subprocesses, measures each
scenario in turn and prints a markdown table (see ``docs/benchmark.md``).
"""
