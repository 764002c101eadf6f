"""Markdown table of exported models from their embedded cards: ``python -m training.report DIR``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edge_enhance.errors import ConfigError

from . import run_tool
from .export import read_card


def table(folder: Path) -> str:
    folder = Path(folder)
    paths = sorted(folder.glob("*.onnx"))
    if not paths:
        raise ConfigError(f"{folder}: {'no exported .onnx models in it' if folder.is_dir() else 'no such folder'}")
    lines = ["| model | measured PSNR (dB) [input / baseline] | params | MACs/px | RF | steps | train min |",
             "|---|---|---|---|---|---|---|"]
    for path in paths:
        try:
            c = read_card(path)
        except Exception as e:  # not ONNX (DecodeError), no card (KeyError), a malformed one (ModelFormatError)
            why = "no model card in it" if isinstance(e, KeyError) else f"unreadable ({type(e).__name__})"
            print(f"python -m training.report: {path}: {why}; left out", file=sys.stderr)
            continue
        e = c.extra
        psnr = ", ".join(f"{k} {v:.2f} [{e.get('input_psnr', {}).get(k, float('nan')):.2f}]"
                         for k, v in e.get("psnr", {}).items())
        peer = e.get("input_psnr", {}).get("Kodak24/degraded sr-x2")
        if peer is not None:
            psnr += f"; sr-x2 on same input {peer:.2f}"
        steps, minutes = e.get("steps"), e.get("train_minutes")
        src = e.get("grown_from")
        if src:  # the source's training, then this run's (a deeper net or a fine-tune of it)
            steps, minutes = f"{src.get('steps')} + {steps}", f"{src.get('train_minutes')} + {minutes}"
        lines.append(f"| {c.name} | {psnr} | {c.params} | {c.macs_per_pixel} | {c.receptive_field} | "
                     f"{steps} | {minutes} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.report", description=__doc__.split(":")[0])
    ap.add_argument("folder", nargs="?", type=Path, default=Path("/var/tmp/edge-enhance/export"),
                    help="folder of exported .onnx models (default /var/tmp/edge-enhance/export, training.queue's)")
    print(table(ap.parse_args(argv).folder))
    return 0


if __name__ == "__main__":
    run_tool("report", main)
