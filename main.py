#!/usr/bin/env python3
"""NeRF Lab: `python main.py` opens the GUI; `python main.py --help` lists the CLI."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from app.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
