"""Train and export the bundled models one after another (one at a time: the CPU has 2 cores).

    nohup nice -n 10 python -m training.queue --out /var/tmp/edge-enhance/export \\
        > /var/tmp/edge-enhance/queue.log 2>&1 &

Each model trains for its recipe's wall-clock budget (resuming from /var/tmp/edge-enhance/ckpt/<name>/),
then, where the recipe has later stages (a deeper net grown from that export, an L2 fine-tune), each
stage from the export before it for its step budget; the last export, with its measured PSNR, is
``<out>/<name>.onnx``. Restarting the command resumes where it stopped; runs whose export already covers
the budget are skipped. ``--factor 2`` doubles every budget so a later session continues training
toward the quality bars (the cosine schedule restarts warm from where the new budget puts it).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from . import export as ex, run_tool
from .data import default_data_root, load_train_images
from .recipes import STAGE_OPTIONS, get
from .train import DEFAULT_CKPT, command, export_model, train

log = logging.getLogger("training")

# The order of the priorities; each trains for its recipe's budget (the bundled file's L1 + L2
# budgets, recipes.py).
QUEUE = ("sr-x2", "sr-x2-rt", "denoise", "sr-x4", "sr-x3", "dejpeg", "enhance-x2")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.queue")
    ap.add_argument("--out", type=Path, default=Path("/var/tmp/edge-enhance/export"),
                    help="where each model's ONNX goes, NAME.onnx (default /var/tmp/edge-enhance/export)")
    ap.add_argument("--ckpt", type=Path, default=DEFAULT_CKPT,
                    help=f"checkpoint folder: a run stopped and started again resumes (default {DEFAULT_CKPT})")
    ap.add_argument("--data", type=Path, help="the shared data folder (default: $EDGE_ENHANCE_DATA, else the "
                                              "nearest shared/data above the code or the working folder)")
    ap.add_argument("--factor", type=float, default=1.0, help="multiply every budget (continue training later)")
    ap.add_argument("--only", nargs="*", choices=QUEUE, metavar="NAME",
                    help=f"names to run (default: all, in queue order: {', '.join(QUEUE)})")
    a = ap.parse_args(argv)
    if not 0 < a.factor < float("inf"):
        ap.error(f"--factor must be a positive number, got {a.factor:g}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    data_root = a.data or default_data_root()
    images = load_train_images(data_root)
    for name in QUEUE:
        if a.only and name not in a.only:
            continue
        r = get(name)
        src = None  # the export the next stage starts from
        for i in range(len(r.stages) + 1):
            src = _run(r, i, src, a, data_root, images)
    log.info("queue finished")
    return 0


def _run(r, i: int, src: Path | None, a, data_root: Path, images) -> Path:
    """Train and export run ``i`` of recipe ``r`` (0: the recipe's own budgets in minutes; later stages
    grow / fine-tune ``src`` for their step budgets); skipped when its export already covers the budget
    and is newer than its source. The last run's export is ``<out>/<name>.onnx``, earlier ones go to
    ``<out>/stages/<name>.<i>/``."""
    ri, name = r.stage(i), r.name
    last = i == len(r.stages)
    done = (a.out if last else a.out / "stages" / f"{name}.{i}") / f"{name}.onnx"
    ckpt = a.ckpt / (name if i == 0 else f"{name}.{i}")
    if i == 0:
        budget = {"minutes": r.minutes * a.factor, "l2_minutes": r.l2_minutes * a.factor}
        need, what = 60 * (budget["minutes"] + budget["l2_minutes"]), "train_seconds"
        overrides = {}
    else:
        st = r.stages[i - 1]
        budget = {"steps": round(st.steps * a.factor), "l2_steps": round(st.l2_steps * a.factor)}
        need, what = budget["steps"] + budget["l2_steps"], "steps"
        overrides = {k: getattr(ri, k) for k in ("convs", "lr", *STAGE_OPTIONS) if getattr(ri, k) != getattr(r, k)}
    if done.exists() and (src is None or done.stat().st_mtime_ns >= src.stat().st_mtime_ns):
        try:
            extra = ex.read_card(done).extra
            if i == 0:  # train_minutes is rounded to 0.1 min in older cards: allow that much slack
                have = float(extra.get("train_seconds", 60 * extra.get("train_minutes", 0)))
                need -= ("train_seconds" not in extra) * 6.0 + 0.5
            else:
                have = extra["steps"]
        except Exception as e:  # an unreadable export is redone, not trusted
            log.warning("%s: cannot read its card (%s); redoing it", done, e)
            have = -1.0
        if have >= need:
            log.info("%s: %s already exported (%s %g, budget %g); skipping", name, done, what, have, need)
            return done
    stale = ckpt / "last.pt"
    if src is not None and stale.exists() and stale.stat().st_mtime_ns < src.stat().st_mtime_ns:
        log.info("%s: %s predates its source %s; starting that stage afresh", name, stale, src)
        stale.unlink()
    log.info("%s: run %d of %d, %s", name, i + 1, len(r.stages) + 1, budget)
    model, state = train(ri, ckpt_dir=ckpt, data_root=data_root, images=images, init_from=src, **budget)
    card = export_model(ri, model, state, done.parent, data_root=data_root,
                        command=command(name, minutes=budget.get("minutes", 0.0), steps=budget.get("steps"),
                                        l2_minutes=budget.get("l2_minutes", 0.0), l2_steps=budget.get("l2_steps"),
                                        overrides=overrides, init_from=src))
    log.info("%s: exported %s  %s", name, done, card.extra["psnr"])
    return done


if __name__ == "__main__":
    run_tool("queue", main)
