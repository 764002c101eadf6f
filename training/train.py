"""Train one bundled model and export it: ``python -m training.train sr-x2 --out DIR``.

Adam + L1, cosine learning rate over the budget (``--steps N``, else ``--minutes M`` of wall
clock, so a 2-core CPU run ends on time), then optionally L2 at lr/10 (``--l2-minutes`` /
``--l2-steps``); checkpoint + resume every few minutes under ``--ckpt`` (default
/var/tmp/edge-enhance/ckpt/<name>/last.pt), Set5 PSNR logged with the exact evaluation protocol
every ``eval_every`` steps, CUDA when present. At the end the collapsed network is written as ONNX
fp32, checked against torch in onnxruntime, measured on the standard sets with the protocol, and
the card (with recipe, data, steps, time, PSNR) is embedded.
Running the same command again resumes; a larger --minutes / --steps continues training.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import os
import platform
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from edge_enhance.atomic import unwritable
from edge_enhance.card import ModelCard
from edge_enhance.cli import StopRequest
from edge_enhance.errors import ConfigError, EdgeEnhanceError, ImageInputError
from edge_enhance.evaluation import Y_WEIGHTS, bar_plan, evaluate

from . import export as ex
from . import run_tool
from .data import PatchSampler, batches, default_data_root, load_train_images
from .model import ResidualNet
from .recipes import RECIPES, Recipe, get

log = logging.getLogger("training")
DEFAULT_CKPT = Path("/var/tmp/edge-enhance/ckpt")
CKPT_EVERY_S = 180.0
VERSION = "1"


def dilation_list(v: str) -> tuple[int, ...]:
    """'1,2,3' -> (1, 2, 3), the --dilations option."""
    try:
        return tuple(int(d) for d in v.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{v}' is not a comma-separated list of integers (e.g. 1,2,1)") from None


# Recipe fields the train CLI can override (--channels 40 ...), for variants: the params / MACs budget
# still applies, the card records them, and a variant wants its own --ckpt (another shape is refused).
OVERRIDES = {"channels": (int, "width (channels of every hidden conv)"), "convs": (int, "depth (3x3 convs)"),
             "patch": (int, "side of an input training patch"), "batch": (int, "patches per step"),
             "lr": (float, "peak learning rate of the L1 phase (the L2 phase runs at a tenth)"),
             "down": (int, "2: the body runs at half resolution (scale-1 models; recipe down)"),
             "dilations": (dilation_list,
                           "dilation of each conv, comma-separated (1,2,3,4,...: a wider receptive field)"),
             "sigma_max": (float, "denoise: the training noise is sigma U(0, this)"),
             "grey_noise": (float, "denoise: this share of the training patches (0..1) get noise that is the same "
                                   "in R, G and B, as a camera's luma noise, besides the protocol's independent noise"),
             "y_loss": (float, "add this weight times the loss on luma Y, the channel sr / enhance are scored "
                               "on, to the RGB loss (0: RGB only)"),
             "colour_perm": (int, "1: each clean patch's R, G and B channels in a random order, so saturated "
                                  "blues and greens are seen as often as reds (0: as the photos are)")}


def _flag(key: str) -> str:
    """The command-line option of a recipe field: sigma_max -> --sigma-max."""
    return "--" + key.replace("_", "-")


def add_override_args(ap, keys=tuple(OVERRIDES)) -> None:
    """--channels / --convs ... (``keys`` of ``OVERRIDES``) on a training CLI's parser."""
    for k in keys:
        kind, what = OVERRIDES[k]
        ap.add_argument(_flag(k), dest=k, type=kind, help=f"{what} instead of the recipe's")


def override_options(overrides: dict) -> str:
    """' --convs 12 --sigma-max 55.0': the overridden recipe fields as a card's command gives them."""
    return "".join(f" {_flag(k)} {_arg(v)}" for k, v in overrides.items())


def given_overrides(a, keys=tuple(OVERRIDES)) -> dict:
    """The recipe fields a parsed command line overrides."""
    return {k: getattr(a, k) for k in keys if getattr(a, k) is not None}


def with_y_term(loss_fn, weight: float):
    """loss_fn on RGB (N, 3, H, W), plus ``weight`` times loss_fn on the luma Y of both."""
    if not weight:
        return loss_fn
    w = torch.tensor(Y_WEIGHTS).view(1, 3, 1, 1) / 255  # rgb_to_y's on 0..1 (its offset cancels)

    def loss(out, target):
        k = w.to(out.device)
        return loss_fn(out, target) + weight * loss_fn((out * k).sum(1), (target * k).sum(1))
    return loss


class Interrupted(EdgeEnhanceError):
    """Ctrl-C / SIGTERM during training: the checkpoint was saved first."""


class CheckpointError(EdgeEnhanceError):
    """A checkpoint that cannot be read or written (named, with the cause)."""


# Recipe fields that are budgets or bookkeeping: a resumed run may change them (a larger budget continues).
_BUDGET_FIELDS = ("minutes", "l2_minutes", "eval_every", "stages", "max_params", "max_macs")


def run_signature(r: Recipe, seed: int = 0, init_from: Path | None = None) -> dict:
    """What a checkpoint was trained as, budgets aside: resuming it with anything else is refused."""
    sig = {k: v for k, v in dataclasses.asdict(r).items() if k not in _BUDGET_FIELDS}
    sig.update(seed=seed, init_from=str(Path(init_from).resolve()) if init_from else None)
    return json.loads(json.dumps(sig))  # tuples as lists, as torch.load gives them back


def default_ckpt_dir(r: Recipe, seed: int = 0, init_from: Path | None = None) -> Path:
    """/var/tmp/edge-enhance/ckpt/<name> for the recipe as it stands; a variant, another seed or a
    run grown from a file gets <name>-<hash of what differs>, so the README's stage commands, each
    from the export before it, do not resume one another's checkpoints."""
    plain = run_signature(get(r.name)) if r.name in RECIPES else None
    sig = run_signature(r, seed, init_from)
    if sig == plain:
        return DEFAULT_CKPT / r.name
    return DEFAULT_CKPT / f"{r.name}-{hashlib.sha1(json.dumps(sig, sort_keys=True).encode()).hexdigest()[:8]}"


def _check_resume(path: Path, ck: dict, sig: dict, steps: int | None, l2_steps: int | None) -> None:
    have = ck.get("run") or {"name": ck.get("recipe")}  # older checkpoints record the recipe name only
    # Without --init-from, a grown run resumes as it is (the source mattered at its start only).
    diff = [k for k in have if k in sig and have[k] != sig[k] and not (k == "init_from" and sig[k] is None)]
    if diff:
        what = ", ".join(f"{_flag(k) if k != 'name' else 'recipe'} {_shown(have[k])} (now {_shown(sig[k])})"
                         for k in diff)
        raise ConfigError(f"{path}: this checkpoint was trained with {what}; resume it with the options it "
                          f"was trained with, or give this run another --ckpt")
    for flag, budget, done in (("--steps", steps, ck.get("step", 0)), ("--l2-steps", l2_steps, ck.get("l2_step", 0))):
        if budget is not None and budget < done:
            raise ConfigError(f"{path}: the checkpoint is at {done} of those steps already, past {flag} {budget}; "
                              f"give a budget of at least {done}, or another --ckpt")


def _zero(steps, minutes) -> bool:
    """A phase's budget is nothing: its step budget, where given, else its minutes, is 0."""
    return steps == 0 if steps is not None else not minutes


def _shown(v) -> str:
    return "none" if v is None or v == [] else _arg(tuple(v)) if isinstance(v, list) else str(v)


def build_model(r: Recipe) -> ResidualNet:
    m = ResidualNet(r.scale, r.channels, r.convs, down=r.down, dilations=r.dilations)
    if r.max_params is not None and m.deploy_params() > r.max_params:
        raise ConfigError(f"recipe {r.name}: {m.deploy_params()} params exceed the budget {r.max_params}")
    if r.max_macs is not None and m.macs_per_pixel() > r.max_macs:
        raise ConfigError(f"recipe {r.name}: {m.macs_per_pixel()} MACs/pixel exceed the budget {r.max_macs}")
    return m


def torch_fn(model: ResidualNet, device):
    """RGB uint8 -> RGB uint8 through the torch model (for the Set5 log during training)."""
    @torch.no_grad()
    def fn(rgb: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.array(rgb)).permute(2, 0, 1)[None].float().div(255.0).to(device)
        y = model(x)[0].permute(1, 2, 0).cpu().numpy()
        return np.clip(np.round(y * 255.0), 0, 255).astype(np.uint8)
    return ex.aligned(fn, model.align, model.scale)


def quick_eval_args(r: Recipe) -> dict:
    if r.task == "denoise":
        return {"sigma": 25.0}
    if r.task == "dejpeg":
        return {"quality": 30}
    return {"scale": r.scale}


def check_eval_sets(r: Recipe, data_root: Path, final: bool = True, log_set5: bool = True) -> None:
    """Before any training: the Set5 of the log (``log_set5``) and, with ``final``, the sets the export
    is measured on must be there, not found missing after ``eval_every`` steps or the whole run."""
    if not Path(data_root).is_dir():
        raise ImageInputError(f"{data_root}: data folder does not exist (--data names the folder holding "
                              f"train/ and eval/)")
    sets = ({"Set5"} if log_set5 else set()) | ({d for _, d, _ in full_eval_plan(r)} if final else set())
    missing = sorted(d for d in sets if not (Path(data_root) / "eval" / d).is_dir())
    if missing:
        raise ImageInputError(f"{Path(data_root) / 'eval'}: {', '.join(missing)} missing, needed for "
                              f"{' and '.join(w for w, on in (('the Set5 log', log_set5), ('the final measurement', final)) if on)} "
                              f"(--data names the folder holding train/ and eval/"
                              f"{'; --no-eval skips the final measurement' if final else ''})")


def full_eval_plan(r: Recipe) -> list[tuple[str, str, dict]]:
    """(label, eval set, protocol args) for the card: the sets the issue's bars are stated on."""
    return [(label, d, {**kw, "scale": r.scale}) for label, d, kw in bar_plan(r.task)]


def _save_atomic(obj, path: Path) -> None:
    """Write a checkpoint through a temporary beside it; the one there before stays whole on any failure."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot save the checkpoint ({e.strerror or e})") from None
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch's zip writer reports a short write as a RuntimeError
        os.unlink(tmp)
        why = e.strerror if isinstance(e, OSError) and e.strerror else "the write failed: disk full or a file-size limit?"
        raise CheckpointError(f"{path}: cannot save the checkpoint ({why}); the one there before is kept") from None
    except BaseException:
        os.unlink(tmp)
        raise


def train(r: Recipe, *, ckpt_dir: Path, data_root: Path, minutes: float | None = None,
          steps: int | None = None, seed: int = 0, images=None, l2_minutes: float = 0.0,
          l2_steps: int | None = None, workers: int = 0,
          init_from: Path | None = None, command=None) -> tuple[ResidualNet, dict]:
    """Train (or resume) until the budget is spent; returns the model and the checkpoint state.

    Then, if ``l2_minutes`` / ``l2_steps`` is given, fine-tune with the L2 loss (what PSNR measures)
    at a tenth of the learning rate on its own cosine schedule; its progress is kept apart in the
    state (``l2_step``, ``l2_elapsed``) so it resumes and extends the same way.

    ``init_from``: a fresh run (no checkpoint under ``ckpt_dir`` yet) starts from that trained
    checkpoint, or exported ``.onnx`` (a bundled model), of a net of the same width and as many or
    fewer convs, grown without changing what it computes (:meth:`ResidualNet.load_deepened`); the
    state records it under ``init``.

    A checkpoint records the run's recipe, seed and source (:func:`run_signature`); resuming it as
    another run, or with a step budget below the steps it has done, raises ConfigError. Ctrl-C saves
    the checkpoint, then raises :class:`Interrupted`. ``command(state)``: the command line of this run,
    kept in the checkpoint (training.qat from a checkpoint records it in its card)."""
    for what, v in (("minutes", minutes), ("steps", steps), ("l2_minutes", l2_minutes), ("l2_steps", l2_steps)):
        if v is not None and not 0 <= v < math.inf:
            raise ConfigError(f"{r.name}: the {what} budget must be a finite number >= 0, got {v}")
    if seed < 0:
        raise ConfigError(f"{r.name}: the seed must not be negative, got {seed}")
    torch.set_num_threads(int(os.environ.get("EDGE_ENHANCE_THREADS", "2")))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = True  # fixed batch shapes: let cuDNN pick its fastest convolutions
    budget_s = 60.0 * (minutes if minutes is not None else r.minutes)
    torch.manual_seed(seed)
    model = build_model(r).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=r.lr)
    try:
        sampler = PatchSampler(r, images if images is not None else load_train_images(data_root), seed=seed)
    except ConfigError as e:
        raise ConfigError(f"{Path(data_root) / 'train'}: {e}") from None
    sig = run_signature(r, seed, init_from)
    state = {"step": 0, "elapsed": 0.0, "history": [], "l2_step": 0, "l2_elapsed": 0.0, "devices": [],
             "init": None}
    path = Path(ckpt_dir) / "last.pt"
    if path.exists():
        try:
            ck = torch.load(path, map_location=device, weights_only=False)
        except Exception as e:  # torch.load raises zip, pickle, EOF and OS errors alike on a damaged file
            raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}); move it away to start "
                                  "afresh, or give another --ckpt") from None
        if not isinstance(ck, dict) or "model" not in ck:
            raise CheckpointError(f"{path}: not a training checkpoint; move it away, or give another --ckpt")
        _check_resume(path, ck, sig, steps, l2_steps)
        try:
            model.load_state_dict(ck["model"])
        except RuntimeError:
            raise ConfigError(f"{path}: the checkpoint holds another architecture than {_arch(r)}; "
                              f"resume with the options it was trained with, or start it in another --ckpt") from None
        opt.load_state_dict(ck["opt"])
        sampler.rng.bit_generator.state = ck["rng"]
        have = tuple(ck.get("dilations") or (1,) * len(model.dilations))  # older checkpoints: all 1
        if have != model.dilations:
            raise ConfigError(f"{path}: the checkpoint's convs have dilations {have}, not {model.dilations}; "
                              f"resume with the options it was trained with, or start it in another --ckpt")
        state.update({k: ck[k] for k in state if k in ck})
        if ck.get("workers", 0) != workers:  # allowed (a GPU run finished on a CPU), but not the recorded run
            log.warning("%s: the checkpoint's batches were drawn with --workers %d; with %d the batches from here "
                        "on differ from that run's", r.name, ck.get("workers", 0), workers)
        log.info("%s: resumed from %s at step %d (%.1f min)", r.name, path, state["step"], state["elapsed"] / 60)
    elif init_from is not None:
        state["init"] = _grow(model, Path(init_from), r, device)
        log.info("%s: grown from %s (%d convs, %d steps)", r.name, init_from, state["init"]["convs"],
                 state["init"]["steps"])
    elif _zero(steps, minutes if minutes is not None else r.minutes) and _zero(l2_steps, l2_minutes):
        raise ConfigError(f"{r.name}: nothing to train (zero budgets, no checkpoint in {ckpt_dir}, no --init-from): "
                          f"the export would be untrained weights")
    log.info("%s: checkpoint %s", r.name, path)

    def save():
        _save_atomic({"model": model.state_dict(), "opt": opt.state_dict(), "rng": sampler.rng.bit_generator.state,
                      "recipe": r.name, "dilations": list(model.dilations), "run": sig, "workers": workers,
                      "command": command(state) if command else None, **state}, path)

    def progress():  # a zero budget (--steps 0 / --minutes 0) skips the phase: an L2-only fine-tune
        if steps is not None:
            return min(1.0, state["step"] / steps) if steps > 0 else 1.0
        return min(1.0, state["elapsed"] / budget_s) if budget_s > 0 else 1.0

    l2_budget_s = 60.0 * l2_minutes

    def l2_progress():
        if l2_steps is not None:  # --l2-steps 0: no L2 phase (not the --l2-minutes default)
            return min(1.0, state["l2_step"] / l2_steps) if l2_steps > 0 else 1.0
        return min(1.0, state["l2_elapsed"] / l2_budget_s) if l2_budget_s > 0 else 1.0

    def quick_eval():
        model.eval()
        res = evaluate(torch_fn(model, device), data_root / "eval" / "Set5",
                       "enhance" if r.task == "enhance" else r.task, with_ssim=False, **quick_eval_args(r))
        model.train()
        steps_done, seconds = state["step"] + state["l2_step"], state["elapsed"] + state["l2_elapsed"]
        state["history"].append((steps_done, round(seconds, 1), round(res.psnr, 3)))
        log.info("%s: step %d  %.1f min  Set5 %.3f dB (input %.3f dB)", r.name, steps_done,
                 seconds / 60, res.psnr, res.baseline_psnr)

    here = _device_name(device)
    if progress() < 1.0 or l2_progress() < 1.0:
        state["devices"] = [d for d in state["devices"] if d != here] + [here]
    stream = batches(sampler, workers, state["step"] + state["l2_step"], pin=device.type == "cuda")
    model.train()
    # Phase 1: L1 at the recipe's rate; phase 2 (optional): L2 at a tenth of it. Step / time
    # counters of phase 2 are its own, so a larger budget for either resumes where it stands.
    phases = ((progress, r.lr, with_y_term(F.l1_loss, r.y_loss), "step", "elapsed"),
              (l2_progress, r.lr / 10, with_y_term(F.mse_loss, r.y_loss), "l2_step", "l2_elapsed"))
    stop = _Stop(r.name)
    try:
        _run_phases(phases, model, opt, stream, device, state, r, quick_eval, save, stop)
        stop.check()  # asked during the last step: stopped before the export, as asked
    except _StopHere:  # between two steps: the checkpoint is what an uninterrupted run had there
        save()
        raise Interrupted(f"{r.name}: interrupted at step {state['step'] + state['l2_step']}; checkpoint saved "
                          f"to {path}: the same command resumes it") from None
    except KeyboardInterrupt:  # a second signal, maybe mid-step: the checkpoint saved last is the whole one
        kept = f"the checkpoint saved last, {path}, resumes it" if path.exists() else "no checkpoint was saved yet"
        raise Interrupted(f"{r.name}: stopped at once; {kept}") from None
    finally:
        stop.restore()
    save()
    model.eval()
    return model.cpu(), state


class _StopHere(Exception):
    """The first Ctrl-C / SIGTERM, raised where one step has ended and the next not begun."""


class _Stop(StopRequest):
    """Ctrl-C / SIGTERM / SIGHUP while training: the first is honoured between two steps (a signal landing
    mid-step had skipped the batch being drawn, or counted an update twice, so a resumed run differed
    from an uninterrupted one); a second stops at once."""

    at_safe_point = _StopHere

    def __init__(self, name: str):
        self.name = name
        super().__init__()

    def on_first(self) -> None:
        log.warning("%s: stopping after this step to save the checkpoint (again to stop at once)", self.name)


def _run_phases(phases, model, opt, stream, device, state, r, quick_eval, save, stop=None) -> None:
    last_ck = t_log = time.monotonic()
    loss_acc, n_acc = 0.0, 0
    for prog, lr_max, loss_fn, step_key, time_key in phases:
        while prog() < 1.0:
            if stop is not None:
                stop.check()
            t0 = time.monotonic()
            lr = 0.5 * lr_max * (1.0 + math.cos(math.pi * prog()))
            for g in opt.param_groups:
                g["lr"] = lr
            x, y = next(stream)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            state[step_key] += 1
            loss_acc += loss.item()
            n_acc += 1
            if (state["step"] + state["l2_step"]) % r.eval_every == 0:
                quick_eval()
            state[time_key] += time.monotonic() - t0
            now = time.monotonic()
            if now - t_log > 60:
                log.info("%s: %s %d  loss %.5f  lr %.2e  %.2f steps/s  %.0f%%", r.name, step_key.replace("_", " "),
                         state[step_key], loss_acc / n_acc, lr, n_acc / (now - t_log), 100 * prog())
                t_log, loss_acc, n_acc = now, 0.0, 0
            if now - last_ck > CKPT_EVERY_S:
                save()
                last_ck = now


def export_model(r: Recipe, model: ResidualNet, state: dict, out: Path, *, data_root: Path,
                 evaluate_sets: bool = True, command: str | None = None, extra: dict | None = None) -> ModelCard:
    """Write <out>/<name>.onnx with its card; returns the card. Raises if ONNX disagrees with torch.

    ``extra`` adds card fields (training.qat notes its fine-tuning there)."""
    m = ex.build_onnx(model)
    err = ex.max_abs_error(model, m)
    if err >= 1e-5:
        raise ConfigError(f"{r.name}: ONNX differs from torch by {err:.2e} (limit 1e-5)")
    psnr, ssim, baseline = {}, {}, {}
    if evaluate_sets:
        fn = ex.ort_fn(ex.ort_session(m), model.align, model.scale)
        task = "enhance" if r.task == "enhance" else r.task
        for label, d, kw in full_eval_plan(r):
            res = evaluate(fn, data_root / "eval" / d, task, **kw)
            psnr[label], ssim[label], baseline[label] = round(res.psnr, 3), round(res.ssim, 4), round(res.baseline_psnr, 3)
            log.info("%s: %s %.3f dB / %.4f (input %.3f dB)", r.name, label, res.psnr, res.ssim, res.baseline_psnr)
        peer = Path(out) / "sr-x2.onnx"
        if r.task == "enhance" and r.scale == 2 and peer.exists():
            import onnx

            res = evaluate(ex.ort_fn(ex.ort_session(onnx.load(str(peer)))), data_root / "eval" / "Kodak24", "enhance", scale=2)
            baseline["Kodak24/degraded sr-x2"] = round(res.psnr, 3)
            log.info("%s: sr-x2 on the degraded Kodak24: %.3f dB", r.name, res.psnr)
    card = ModelCard(
        name=r.name, task=r.task, scale=r.scale, receptive_field=model.receptive_field, layout="nchw",
        base=r.base, version=VERSION, params=model.deploy_params(), macs_per_pixel=model.macs_per_pixel(),
        align=model.align,
        extra={
            "recipe": command or f"python -m training.train {r.name} --out DIR",
            "architecture": _architecture_text(r),
            "data": f"T91 + BSD200 ({_data_shown(data_root)}/train), random patches, flips/rot90",
            "degradation": _degradation_text(r),
            "steps": state["step"] + state.get("l2_step", 0), "batch": r.batch, "patch": r.patch,
            "train_minutes": round((state["elapsed"] + state.get("l2_elapsed", 0.0)) / 60, 1),
            "train_seconds": round(state["elapsed"] + state.get("l2_elapsed", 0.0), 1),
            **({"grown_from": state["init"]} if state.get("init") else {}),
            **({"l2_finetune": {"steps": state["l2_step"], "minutes": round(state["l2_elapsed"] / 60, 1),
                                "lr": r.lr / 10}} if state.get("l2_step") else {}),
            "device": " then ".join(state.get("devices") or [_device_name(torch.device("cpu"))]),
            "protocol": "../shared/data/README.md (Pillow bicubic LR; Y-PSNR shave s for sr/enhance, RGB for denoise/dejpeg)",
            "psnr": psnr, "ssim": ssim, "input_psnr": baseline,
            "onnx_max_abs_err_vs_torch": err,
            **(extra or {}),
        },
    )
    ex.set_card(m, card)
    ex.write_atomic(m, Path(out) / f"{r.name}.onnx")
    return card


def command(name: str, *, minutes: float, steps: int | None = None, l2_minutes: float = 0.0,
            l2_steps: int | None = None, overrides: dict | None = None, init_from: Path | None = None,
            seed: int = 0, data: Path | None = None, workers: int = 0) -> str:
    """The training command a card records: the recipe options overridden (``OVERRIDES``), a seed
    other than 0 and the budgets that were in force (steps over minutes; an L2 budget of 0 too
    where the recipe has one, so that the command repeats the run)."""
    cmd = f"python -m training.train {name} --out DIR"
    cmd += override_options(overrides or {})
    cmd += f" --seed {seed}" if seed else ""
    cmd += f" --data {data}" if data is not None and _data_shown(data) != "../shared/data" else ""
    cmd += f" --init-from {init_from}" if init_from else ""
    cmd += f" --workers {workers}" if workers else ""  # it decides which batches are drawn
    cmd += f" --steps {steps}" if steps is not None else f" --minutes {minutes:g}"
    if l2_steps is not None and (l2_steps or getattr(RECIPES.get(name), "l2_minutes", 0)):
        cmd += f" --l2-steps {l2_steps}"
    elif l2_minutes or getattr(RECIPES.get(name), "l2_minutes", 0):
        cmd += f" --l2-minutes {l2_minutes:g}"
    return cmd


def _data_shown(data_root: Path) -> str:
    """../shared/data for the shared data beside the repository (a bundled card names no machine's
    paths), else the folder as given."""
    try:
        if Path(data_root).resolve() == default_data_root().resolve():
            return "../shared/data"
    except ConfigError:
        pass
    return str(data_root)


def _arg(v) -> str:
    return ",".join(map(str, v)) if isinstance(v, tuple) else str(v)


def _grow(model: ResidualNet, src: Path, r: Recipe, device) -> dict:
    if not src.is_file():
        raise ConfigError(f"{src}: no such checkpoint to grow from")
    if src.suffix == ".onnx":
        return _grow_from_onnx(model, src, r)
    try:
        ck = torch.load(src, map_location=device, weights_only=False)
    except Exception as e:  # torch.load raises pickle, zip and OS errors alike on a file that is not one
        raise ConfigError(f"{src}: not a training checkpoint ({type(e).__name__})") from None
    if not isinstance(ck, dict) or "model" not in ck:
        raise ConfigError(f"{src}: not a training checkpoint (no model state in it)")
    try:
        n = model.load_deepened(ck["model"], ck.get("dilations"))
    except ValueError as e:
        raise ConfigError(f"{src}: cannot grow it into {_arch(r)}: {e}") from None
    except RuntimeError:
        raise ConfigError(f"{src}: cannot grow it into {_arch(r)}: its widths, scale or first conv differ") from None
    return {"checkpoint": str(src), "recipe": ck.get("recipe"), "convs": n,
            "steps": ck.get("step", 0) + ck.get("l2_step", 0),
            "train_minutes": round((ck.get("elapsed", 0.0) + ck.get("l2_elapsed", 0.0)) / 60, 1),
            "devices": ck.get("devices", [])}


def _grow_from_onnx(model: ResidualNet, src: Path, r: Recipe) -> dict:
    """_grow from an exported model: its collapsed convs go into the training blocks (qat's loader,
    which checks the file computes what the recipe's net does), then the net is deepened."""
    import onnx

    from .qat import load_source  # imported here: qat imports this module

    try:
        convs = [node for node in onnx.load(str(src)).graph.node if node.op_type == "Conv"]
    except Exception as e:  # onnx raises DecodeError and friends
        raise ConfigError(f"{src}: not a readable ONNX model ({type(e).__name__})") from None
    n = len(convs)
    dil = tuple(next((list(a.ints)[0] for a in c.attribute if a.name == "dilations"), 1) for c in convs)
    try:
        net, st = load_source(dataclasses.replace(r, convs=n, dilations=dil if max(dil, default=1) > 1 else ()), src)
        model.load_deepened(net.state_dict(), dil)
    except (ValueError, RuntimeError) as e:
        raise ConfigError(f"{src}: cannot grow it into {_arch(r)}: {str(e).splitlines()[0]}") from None
    card = st.get("card", {})
    # A source that was itself grown or fine-tuned: its own source's training counts too (kept nested).
    prior = card.get("grown_from") or {}
    devices = list(dict.fromkeys(prior.get("devices", []) + ([card["device"]] if card.get("device") else [])))
    return {"checkpoint": str(src), "recipe": card.get("recipe"), "convs": n,
            "steps": st["step"] + int(prior.get("steps", 0)),
            "train_minutes": round(st["elapsed"] / 60 + float(prior.get("train_minutes", 0.0)), 1),
            "devices": devices, **({"grown_from": prior} if prior else {})}


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"


def _arch(r: Recipe) -> str:
    return (f"{r.convs} convs x {r.channels} channels" + (" at half resolution" if r.down == 2 else "")
            + (f" dilated {_arg(r.dilations)}" if r.dilations else ""))


def _architecture_text(r: Recipe) -> str:
    if r.down == 2:
        return (f"conv4x4 stride 2 (4x4+2x2 branches collapsed) + {r.convs - 1} x conv3x3 at half resolution "
                f"({r.channels} ch, RepConv 3x3+1x1+identity collapsed), ReLU, DepthToSpace DCR 2 of the "
                f"residual, added to the input, Clip(0,1)")
    dil = f", dilations {_arg(r.dilations)}" if r.dilations else ""
    d2s = ", DepthToSpace DCR" if r.scale > 1 else ""  # a scale-1 net's last conv gives the 3 channels itself
    return (f"{r.convs} x conv3x3 ({r.channels} ch{dil}, RepConv 3x3+1x1+identity collapsed), "
            f"ReLU, residual on {r.base} base{d2s}, Clip(0,1)")


def _degradation_text(r: Recipe) -> str:
    perm = ", channels of each clean patch in a random order" if r.colour_perm else ""
    return _degradation(r) + perm


def _degradation(r: Recipe) -> str:
    if r.task == "sr":
        return f"Pillow bicubic x1/{r.scale} of the whole mod-cropped image"
    if r.task == "denoise":
        grey = f" ({r.grey_noise:g} of the patches: one draw for R, G and B)" if r.grey_noise else ""
        return f"blind Gaussian sigma U(0, {r.sigma_max:g}){grey}, rounded and clipped to uint8"
    if r.task == "dejpeg":
        return f"Pillow JPEG quality U{{{r.quality_range[0]}..{r.quality_range[1]}}}"
    return "edge_enhance.evaluation.degrade: blur sigma U(0.4,1.6), bicubic x1/2, noise sigma U(1,10), JPEG q U{40..90}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.train", description=__doc__.split("\n")[0])
    ap.add_argument("name", choices=sorted(RECIPES))
    ap.add_argument("--out", type=Path, required=True, help="folder for <name>.onnx")
    ap.add_argument("--minutes", type=float, help="wall-clock budget (default: the recipe's)")
    ap.add_argument("--steps", type=int, help="step budget instead of minutes")
    ap.add_argument("--l2-minutes", type=float,
                    help="then fine-tune with the L2 loss at lr/10 for this long (resumable, like --minutes; "
                         "default: the recipe's)")
    ap.add_argument("--l2-steps", type=int, help="step budget of the L2 fine-tune instead of --l2-minutes")
    ap.add_argument("--ckpt", type=Path, help="checkpoint folder (default /var/tmp/edge-enhance/ckpt/<name>, or "
                                              "<name>-<hash> for a variant, another seed or an --init-from run)")
    ap.add_argument("--data", type=Path, help="the shared data folder (default: $EDGE_ENHANCE_DATA, else the "
                                              "nearest shared/data above the code or the working folder)")
    ap.add_argument("--seed", type=int, default=0,
                    help="seed of the initial weights and the patch order (default 0; another one shows the run-to-run spread)")
    ap.add_argument("--workers", type=int, default=0,
                    help="processes drawing the training batches (0: in the training process; a few on a GPU)")
    ap.add_argument("--eval-every", type=int, help="steps between Set5 logs (default: the recipe's; raise it on a GPU)")
    ap.add_argument("--no-eval", action="store_true", help="skip the final Set5/Set14/BSD100... measurement")
    ap.add_argument("--init-from", type=Path, metavar="CKPT",
                    help="start a fresh run from this trained last.pt or exported .onnx (a bundled model) of a net "
                         "of the same width and as many or fewer convs: its convs are kept and any new ones start "
                         "as identities (the output is unchanged). With --steps 0 and --l2-steps N: an L2 fine-tune")
    add_override_args(ap)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    r = get(a.name)
    for flag, v in (("--minutes", a.minutes), ("--steps", a.steps), ("--l2-minutes", a.l2_minutes),
                    ("--l2-steps", a.l2_steps), ("--workers", a.workers), ("--seed", a.seed)):
        if v is not None and not 0 <= v < math.inf:
            ap.error(f"{flag} must be a finite number >= 0, got {v:g}")
    if a.out.exists() and not a.out.is_dir():
        ap.error(f"--out {a.out}: is a file; give a folder for {a.name}.onnx")
    if a.eval_every is not None:
        if a.eval_every < 1:
            ap.error("--eval-every must be positive")
        r = dataclasses.replace(r, eval_every=a.eval_every)
    overrides = given_overrides(a)
    for k in ("sigma_max", "grey_noise"):
        if k in overrides and r.task != "denoise":
            ap.error(f"{_flag(k)} is an option of the denoise task's noise, not of {r.name}")
    if overrides:
        try:
            r = dataclasses.replace(r, **overrides)  # Recipe checks the ranges
            build_model(r)  # and the budget, before any data is read
        except ConfigError as e:
            ap.error(str(e))
    data_root = a.data or default_data_root()
    check_eval_sets(r, data_root, final=not a.no_eval)
    l2_minutes = r.l2_minutes if a.l2_minutes is None else a.l2_minutes
    ckpt = a.ckpt or default_ckpt_dir(r, a.seed, a.init_from)
    for flag, folder in (("--out", a.out), ("--ckpt", ckpt)):  # said now, not after the training it would lose
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            ap.error(f"{flag} {folder}: cannot make the folder ({e.strerror or e})")
        why = unwritable(folder)
        if why:
            ap.error(f"{flag} {folder}: cannot write there ({why})")
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a kill saves the checkpoint as Ctrl-C does

    def cmd(state: dict) -> str:
        return command(r.name, minutes=r.minutes if a.minutes is None else a.minutes, steps=a.steps,
                       l2_minutes=l2_minutes, l2_steps=a.l2_steps, overrides=overrides,
                       init_from=(state["init"] or {}).get("checkpoint"), seed=a.seed, data=a.data, workers=a.workers)

    try:
        model, state = train(r, ckpt_dir=ckpt, data_root=data_root, command=cmd,
                             minutes=a.minutes, steps=a.steps, l2_minutes=l2_minutes, l2_steps=a.l2_steps,
                             workers=a.workers, init_from=a.init_from, seed=a.seed)
    except Interrupted as e:
        print(f"python -m training.train: {e}", file=sys.stderr)
        return 130
    card = export_model(r, model, state, a.out, data_root=data_root, evaluate_sets=not a.no_eval, command=cmd(state))
    log.info("wrote %s\n%s", a.out / f"{r.name}.onnx", ex.card_json_pretty(card))
    return 0


if __name__ == "__main__":
    run_tool("train", main)
