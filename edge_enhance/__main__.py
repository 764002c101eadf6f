"""``python -m edge_enhance ...``: the ``edge-enhance`` command."""
import sys

from .cli import main

sys.exit(main())
