"""Quality / speed / memory / tiling benchmarks, run side by side with the peers a user would pick.

``python -m benchmarks`` or ``edge-enhance bench``; see :mod:`benchmarks.cli`. Every figure is
measured in the run that reports it; anything that cannot run is reported as "not run: reason".
"""
