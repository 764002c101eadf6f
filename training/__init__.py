"""PyTorch recipes that reproduce every bundled model (dev/train extra; never imported by the runtime).

One command per model: ``python -m training.train sr-x2 --out DIR``; the whole queue of bundled
models with wall-clock budgets: ``python -m training.queue``. See training/README.md.
"""


def run_tool(name: str, main) -> None:
    """``python -m training.NAME``: run ``main`` and exit with its code; an EdgeEnhanceError (a bad option or
    model file: 2; a missing or unreadable data folder: 1) is one line on stderr, not a traceback."""
    import sys

    from edge_enhance.errors import ConfigError, EdgeEnhanceError

    try:
        sys.exit(main())
    except KeyboardInterrupt:  # before training started (a run in training saves its checkpoint first)
        print(f"python -m training.{name}: interrupted", file=sys.stderr)
        sys.exit(130)
    except EdgeEnhanceError as e:
        print(f"python -m training.{name}: error: {e}", file=sys.stderr)
        sys.exit(2 if isinstance(e, ConfigError) else 1)
