"""Train and export the bundled models one after another (one at a time: the CPU has 2 cores).

    nohup nice -n 10 python -m training.queue --out /var/tmp/edge-enhance/export \\
        > /var/tmp/edge-enhance/queue.log 2>&1 &

Each model trains for its wall-clock budget (resuming from /var/tmp/edge-enhance/ckpt/<name>/),
then is exported with its measured PSNR. Restarting the command resumes where it stopped; models
whose export already covers the budget are skipped. ``--factor 2`` doubles every budget so a later
session continues training toward the quality bars (the cosine schedule restarts warm from where
the new budget puts it).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from . import export as ex
from .data import default_data_root, load_train_images
from .recipes import get
from .train import DEFAULT_CKPT, command, export_model, train

log = logging.getLogger("training")

# The order of the priorities; each trains for its recipe's budget (the bundled file's L1 + L2
# budgets, recipes.py).
QUEUE = ("sr-x2", "sr-x2-rt", "denoise", "sr-x4", "sr-x3", "dejpeg", "enhance-x2")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.queue")
    ap.add_argument("--out", type=Path, default=Path("/var/tmp/edge-enhance/export"))
    ap.add_argument("--ckpt", type=Path, default=DEFAULT_CKPT)
    ap.add_argument("--data", type=Path)
    ap.add_argument("--factor", type=float, default=1.0, help="multiply every budget (continue training later)")
    ap.add_argument("--only", nargs="*", help="names to run (default: all, in queue order)")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    data_root = a.data or default_data_root()
    images = load_train_images(data_root)
    for name in QUEUE:
        if a.only and name not in a.only:
            continue
        r = get(name)
        budget, l2_budget = r.minutes * a.factor, r.l2_minutes * a.factor
        done = a.out / f"{name}.onnx"
        if done.exists():
            try:
                extra = ex.read_card(done).extra
                trained_s = float(extra.get("train_seconds", 60 * extra.get("train_minutes", 0)))
            except Exception as e:  # an unreadable export is redone, not trusted
                log.warning("%s: cannot read its card (%s); redoing it", done, e)
                extra, trained_s = {}, -1.0
            # train_minutes is rounded to 0.1 min in older cards: allow that much slack.
            if trained_s >= 60 * (budget + l2_budget) - ("train_seconds" not in extra) * 6.0 - 0.5:
                log.info("%s: already exported after %.1f min (budget %.1f); skipping", name, trained_s / 60,
                         budget + l2_budget)
                continue
        log.info("%s: training for %.1f + %.1f (L2) min", name, budget, l2_budget)
        model, state = train(r, ckpt_dir=a.ckpt / name, data_root=data_root, minutes=budget, images=images,
                             l2_minutes=l2_budget)
        card = export_model(r, model, state, a.out, data_root=data_root,
                            command=command(name, minutes=budget, l2_minutes=l2_budget))
        log.info("%s: exported %s  %s", name, done, card.extra["psnr"])
    log.info("queue finished")
    return 0


if __name__ == "__main__":
    sys.exit(main())
