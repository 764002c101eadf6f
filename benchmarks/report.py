"""The run's outputs: results.json, report.md and pareto.png, each written atomically."""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path

from edge_enhance.atomic import write_bytes as write_atomic  # fsync'd, with a new file's usual mode
from edge_enhance.card import strict_json

from .bars import BAR_SIZE
from .quality import HEADLINE
from .stats import pareto_front

log = logging.getLogger(__name__)


def _f(x, fmt=".2f", none="-"):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return none
    return format(x, fmt)


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]


def pareto_points(res: dict) -> list[dict]:
    """One point per subject (model/peer x engine x precision): headline-set PSNR vs output MP/s at the
    bar frame size and all threads, grouped by (task, scale)."""
    n = res["meta"]["cpu_count"]
    speed = {}
    at_size = [r for r in res["speed"] if tuple(r["input"]) == BAR_SIZE]
    for r in sorted(at_size, key=lambda r: r["threads"] != n):  # all threads first; Pillow has only 1
        speed.setdefault(r["label"], r)
    pts = []
    for q in res["quality"]:
        if q["dataset"] != HEADLINE.get(q["task"]) or q["label"] not in speed:
            continue
        pts.append({"label": q["label"], "group": f"{q['task']} x{q['scale']}", "ours": q["ours"],
                    "mp_per_s": speed[q["label"]]["mp_per_s"], "psnr": q["psnr"], "dataset": q["dataset"]})
    for g in {p["group"] for p in pts}:
        members = [p for p in pts if p["group"] == g]
        front = set(pareto_front([(p["mp_per_s"], p["psnr"]) for p in members]))
        for i, p in enumerate(members):
            p["pareto"] = i in front
    return pts


def ratios(res: dict) -> list[dict]:
    """Each of our subjects against each peer of its scale, on the same frames and images of this run:
    output MP/s ratio (bar frame size, all threads) and PSNR difference on the headline set."""
    pts = {p["label"]: p for p in pareto_points(res)}
    out = []
    for a in (p for p in pts.values() if p["ours"]):
        for b in (p for p in pts.values() if not p["ours"] and p["group"] == a["group"]):
            out.append({"subject": a["label"], "peer": b["label"], "dataset": a["dataset"],
                        "speed_ratio": a["mp_per_s"] / b["mp_per_s"], "psnr_delta": a["psnr"] - b["psnr"]})
    return out


def chart(res: dict, path: Path) -> str | None:
    """pareto.png; returns a reason string when it cannot be drawn."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install 'edge-enhance[bench]')"
    pts = pareto_points(res)
    if not pts:
        return "no subject has both a quality and a speed row"
    groups = sorted({p["group"] for p in pts})
    fig, axes = plt.subplots(1, len(groups), figsize=(9 * len(groups), 5.5), squeeze=False)
    markers = "osD^v<>ph*X"
    for ax, g in zip(axes[0], groups):
        members = sorted((p for p in pts if p["group"] == g), key=lambda p: (not p["ours"], p["label"]))
        for i, p in enumerate(members):
            # Ours filled, peers hollow; a black edge marks the Pareto front. The legend names each point.
            ax.scatter(p["mp_per_s"], p["psnr"], marker=markers[i % len(markers)], s=60,
                       color=f"C{i % 10}" if p["ours"] else "none", edgecolors=f"C{i % 10}" if not p["pareto"] else "black",
                       linewidths=1.5, label=f"{p['label']} ({p['mp_per_s']:.2f} MP/s, {p['psnr']:.2f} dB)")
        front = sorted((p for p in members if p["pareto"]), key=lambda p: p["mp_per_s"])
        ax.plot([p["mp_per_s"] for p in front], [p["psnr"] for p in front], "--", color="tab:red", lw=1,
                label="Pareto front")
        ax.set_xscale("log")
        ax.set_xlabel(f"output MP/s ({BAR_SIZE[0]}x{BAR_SIZE[1]} input, all threads)")
        ax.set_ylabel(f"PSNR dB ({members[0]['dataset']})")
        ax.set_title(g)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.suptitle(f"quality vs speed, {res['meta']['machine']}, {res['meta']['date']}", fontsize=9)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".part.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return None


def markdown(res: dict) -> str:
    m = res["meta"]
    out = ["# edge-enhance benchmark", "",
           f"- machine: {m['machine']}", f"- date: {m['date']}", f"- command: `{m['command']}`",
           f"- CPU features: {', '.join(m.get('cpu_features') or ['not read'])}",
           "- software: " + ", ".join(f"{k} {v}" for k, v in (m.get("versions") or {}).items()),
           f"- load: {m['load']}", f"- mode: {'quick' if m['quick'] else 'full'}; sections: {', '.join(m['sections'])}",
           *[f"- note: {n}" for n in m.get("notes", [])],
           "", "## Bars", ""]
    out += [f"- **{b['status']}** {b['bar']}: {b['figure'] or b['reason']}" for b in res["bars"]] or ["- none judged"]
    rat = ratios(res)
    if rat:
        out += ["", f"## Ratios against the peers ({BAR_SIZE[0]}x{BAR_SIZE[1]} input, all threads; same run)", ""]
        out += _table(["subject", "peer", "speed (ours / peer)", "PSNR difference dB", "set"],
                      [[r["subject"], r["peer"], f"{r['speed_ratio']:.2f}x", f"{r['psnr_delta']:+.2f}", r["dataset"]]
                       for r in rat])
    if res["quality"]:
        out += ["", "## Quality (evaluation protocol of ../shared/data/README.md)", ""]
        rows = [[r["label"], "ours" if r["ours"] else "peer", r["task"], f"x{r['scale']}", r["dataset"],
                 str(r["images"]), _f(r["psnr"]), _f(r["ssim"], ".4f"), _f(r["input_psnr"]),
                 _f(r["seconds"] / r["images"] if r.get("seconds") and r["images"] else None)] for r in res["quality"]]
        out += _table(["subject", "", "task", "scale", "set", "images", "PSNR dB", "SSIM", "input PSNR dB", "s / image"],
                      rows)
        out += ["", "SR: Y PSNR, shave = scale, Pillow bicubic LR; denoise: sigma 25 clipped; dejpeg: Pillow JPEG q30. "
                "'input PSNR' is the degraded input (bicubic upscale for SR)."]
    if res["speed"]:
        out += ["", "## Speed (median of the timed runs; warm-up excluded; contenders interleaved)", ""]
        rows = [[r["label"], str(r["threads"]), f"{r['input'][0]}x{r['input'][1]}", f"{r['output'][0]}x{r['output'][1]}",
                 str(r["runs"]), _f(r["ms_per_frame"], ".1f"), _f(r["fps"], ".1f"), _f(r["mp_per_s"]),
                 _f(r["macs_per_out_px"], ".0f"), _f(r["gmac_per_s"], ".1f")] for r in res["speed"]]
        out += _table(["subject", "threads", "input", "output", "runs", "ms/frame", "fps", "out MP/s",
                       "MACs/out px", "GMAC/s"], rows)
        out += ["", "Our models run through `Enhancer.enhance_rgb` with the default auto tiling (256 MB), "
                "i.e. the path a user's photo takes; peers are called as their libraries are."]
    if res["memory"]:
        out += ["", "## Memory (peak RSS, one fresh process per run)", ""]
        rows = [[r["label"], _f(r["megapixels"], "g"), f"{r['input'][0]}x{r['input'][1]}", str(r["memory_mb"]),
                 f"{r['tile'][0]}x{r['tile'][1]}", str(r["tiles"]), _f(r["rss_before_mb"], ".0f"),
                 _f(r["peak_rss_mb"], ".0f"), _f(r["peak_rss_mb"] - r["rss_before_mb"], ".0f"),
                 _f(r["output_mb"], ".0f"), _f(r["seconds"], ".1f")] for r in res["memory"]]
        out += _table(["subject", "MP in", "input", "--memory MB", "tile", "tiles", "RSS before MB", "peak RSS MB",
                       "peak - before MB", "output array MB", "s"], rows)
        out += ["", "'RSS before' is after loading the model and making the input frame; the output array "
                "is held in RAM by the caller and counts in the peak."]
    if res["tiling"]:
        out += ["", "## Tiling overhead (same frame, whole image vs auto tiles, interleaved)", ""]
        rows = [[r["label"], f"{r['input'][0]}x{r['input'][1]}", r["config"], f"{r['tile'][0]}x{r['tile'][1]}",
                 str(r["tiles"]), _f(r["median_s"] * 1e3, ".1f"), _f(r["ratio_to_whole"], ".3f")] for r in res["tiling"]]
        out += _table(["subject", "input", "config", "tile", "tiles", "ms", "time / whole"], rows)
    files = [x for x in res.get("subjects", []) if x.get("sha256")]
    if files:
        out += ["", "## Files measured", ""]
        out += _table(["subject", "file", "SHA-256"], [[x["label"], x["path"], x["sha256"]] for x in files])
    if res["not_run"]:
        out += ["", "## Not run", ""] + [f"- {n['what']}: not run: {n['reason']}" for n in res["not_run"]]
    if res.get("chart"):
        out += ["", "## Quality vs speed", "", f"![quality vs speed]({res['chart']})"]
    return "\n".join(out) + "\n"


def write_all(res: dict, out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    png = out_dir / "pareto.png"
    reason = chart(res, png)
    if reason:
        res["not_run"].append({"what": "chart", "status": "not run", "reason": reason})
        res["chart"] = None
    else:
        res["chart"] = png.name
        res["pareto"] = pareto_points(res)
    paths = {"json": write_atomic(out_dir / "results.json", strict_json(res, indent=1, default=str).encode()),
             "markdown": write_atomic(out_dir / "report.md", markdown(res).encode())}
    if not reason:
        paths["chart"] = png
    return paths
