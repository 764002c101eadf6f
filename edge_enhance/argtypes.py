"""argparse ``type=`` factories that turn a bad value into one clear usage error."""
from __future__ import annotations

import argparse


def value_range(text: str) -> tuple[float, float]:
    """``LO,HI`` with LO < HI, e.g. ``0,255``: the values a model's input (and output) pixels span."""
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not LO,HI (e.g. 0,255)") from None
    if not lo < hi:
        raise argparse.ArgumentTypeError(f"{text!r}: LO must be below HI")
    return lo, hi


def number(kind=float, lo=None, hi=None, unit: str = ""):
    """Parse ``kind`` (int or float) within [lo, hi] (either end may be open); ``unit`` for messages."""
    noun = "an integer" if kind is int else "a number"
    bounds = (f"in {lo:g}..{hi:g}" if lo is not None and hi is not None
              else f">= {lo:g}" if lo is not None else f"<= {hi:g}" if hi is not None else "")
    suffix = f" {unit}" if unit else ""

    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {noun}{' of' + suffix if unit else ''}") from None
        if (lo is not None and not v >= lo) or (hi is not None and not v <= hi):
            raise argparse.ArgumentTypeError(f"{text!r} must be {bounds}{suffix}")
        return v

    return parse
