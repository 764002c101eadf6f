"""PyTorch recipes that reproduce every bundled model (dev/train extra; never imported by the runtime).

One command per model: ``python -m training.train sr-x2 --out DIR``; the whole queue of bundled
models with wall-clock budgets: ``python -m training.queue``. See training/README.md.
"""
