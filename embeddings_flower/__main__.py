"""``python -m embeddings_flower``: the same as ``embeddings-flower``."""

from __future__ import annotations

import sys

from embeddings_flower.cli import main

if __name__ == "__main__":
    sys.exit(main())
