"""PyTorch recipes that reproduce every bundled model (dev/train extra; never imported by the runtime).

One command per model: ``python -m training.train sr-x2 --out DIR``; the whole queue of bundled
models with wall-clock budgets: ``python -m training.queue``. See training/README.md.
"""
import sys


def _check_the_train_extra() -> None:
    """`python -m training.NAME` without torch or onnx: one line naming the extra and exit 1 (the CLI's code for
    a missing package), not a traceback from NAME's imports. While -m locates NAME, this package is imported
    with sys.argv[0] set to "-m"; imported as a library (the tests), it is left alone."""
    import importlib.util

    if sys.argv[:1] != ["-m"]:
        return
    missing = next((m for m in ("torch", "onnx") if importlib.util.find_spec(m) is None), None)
    if missing:
        tool = next((a for a in getattr(sys, "orig_argv", ()) if a.startswith("training")), "training")
        print(f"python -m {tool}: error: {missing} is not installed: pip install 'edge-enhance[train]'",
              file=sys.stderr)
        sys.exit(1)


_check_the_train_extra()


def run_tool(name: str, main) -> None:
    """``python -m training.NAME``: run ``main`` and exit with its code; an EdgeEnhanceError (a bad option or
    model file: 2; a missing or unreadable data folder: 1) is one line on stderr, not a traceback."""
    from edge_enhance.cli import tolerant_std_streams
    from edge_enhance.errors import ConfigError, EdgeEnhanceError

    tolerant_std_streams()
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # before training started (a run in training saves its checkpoint first)
        print(f"python -m training.{name}: interrupted", file=sys.stderr)
        sys.exit(130)
    except EdgeEnhanceError as e:
        print(f"python -m training.{name}: error: {e}", file=sys.stderr)
        sys.exit(2 if isinstance(e, ConfigError) else 1)
