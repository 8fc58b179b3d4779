"""``python -m engine.run``: the command line's entry point (the product brief fixes its
name).  Everything lives in :mod:`engine.cli`; this module only hands over to it."""

from __future__ import annotations

import sys

from engine.cli.main import main, program

__all__ = ["main", "program"]

if __name__ == "__main__":
    sys.exit(program())
