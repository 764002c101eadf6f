"""One frozen recipe per bundled model: task, architecture, data and schedule.

Budgets (issue 3): sr-x2/x3/x4 <= 50k params, sr-x2-rt <= 25k MACs per input pixel,
denoise / dejpeg / enhance-x2 <= 100k params. Checked when a model is built (see train.build_model).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from edge_enhance.errors import ConfigError

TASKS = ("sr", "denoise", "dejpeg", "enhance")


@dataclass(frozen=True)
class Stage:
    """A later training run of a bundled model, started from the previous run's export
    (``training.train --init-from``): grown to ``convs`` of the same width (None: the same depth),
    ``steps`` L1 steps at ``lr`` (None: the recipe's), then ``l2_steps`` L2 steps at a tenth of it;
    ``batch``, ``patch``, ``y_loss`` and ``colour_perm`` (None: the recipe's) for this run alone.
    Step budgets, so the schedule is the same on any machine (these runs were made on an H100 or the
    2-core CPU; the model card says which)."""
    convs: int | None = None
    lr: float | None = None
    steps: int = 0
    l2_steps: int = 0
    batch: int | None = None
    patch: int | None = None
    y_loss: float | None = None
    colour_perm: int | None = None


@dataclass(frozen=True)
class Recipe:
    name: str
    task: str
    scale: int
    channels: int
    convs: int
    patch: int  # side of an input (LR) training patch
    down: int = 1  # 2: the body runs at half resolution (scale-1 models; see model.py)
    dilations: tuple[int, ...] = ()  # one per conv (model.py's dilated variant); () is all 1
    batch: int = 16
    lr: float = 1e-3
    minutes: float = 30.0  # wall-clock budget (time-based cosine): the bundled file's L1 budget
    l2_minutes: float = 0.0  # then the L2 fine-tune at lr/10 (train.py): the bundled file's L2 budget
    max_params: int | None = None
    max_macs: int | None = None
    sigma_max: float = 50.0  # denoise: blind sigma U(0, sigma_max)
    grey_noise: float = 0.0  # denoise: share of patches whose noise is the same in R, G and B (luma noise)
    y_loss: float = 0.0  # weight of a luma (Y) term added to the RGB loss (sr / enhance are scored on Y)
    quality_range: tuple[int, int] = (10, 90)  # dejpeg: quality U(lo, hi)
    colour_perm: int = 0  # 1: each clean patch's R, G, B in a random order (saturated blues as often as reds)
    eval_every: int = 250  # steps between Set5 logs
    stages: tuple[Stage, ...] = ()  # later runs, each from the export before it (training.queue runs them)

    def __post_init__(self):
        if self.task not in TASKS:
            raise ConfigError(f"recipe {self.name}: task {self.task!r} not in {TASKS}")
        if self.task in ("denoise", "dejpeg") and self.scale != 1:
            raise ConfigError(f"recipe {self.name}: {self.task} models have scale 1")
        if self.task in ("sr", "enhance") and self.scale < 2:
            raise ConfigError(f"recipe {self.name}: {self.task} needs scale >= 2")
        if self.down not in (1, 2) or (self.down == 2 and (self.scale != 1 or self.patch % 2)):
            raise ConfigError(f"recipe {self.name}: down=2 needs scale 1 and an even patch")
        if self.dilations and (len(self.dilations) != self.convs or min(self.dilations) < 1 or self.down != 1):
            raise ConfigError(f"recipe {self.name}: dilations {self.dilations} must be {self.convs} values >= 1 "
                              f"(and the net at full resolution)")
        if not self.sigma_max > 0:
            raise ConfigError(f"recipe {self.name}: sigma_max {self.sigma_max} must be positive")
        if not 0 <= self.grey_noise <= 1:
            raise ConfigError(f"recipe {self.name}: grey_noise {self.grey_noise} must be in 0..1")
        if not self.y_loss >= 0:
            raise ConfigError(f"recipe {self.name}: y_loss {self.y_loss} must not be negative")
        if self.colour_perm not in (0, 1):
            raise ConfigError(f"recipe {self.name}: colour_perm {self.colour_perm} must be 0 or 1")
        if self.channels < 1 or self.convs < 2 or self.patch < 8 or self.batch < 1:
            raise ConfigError(f"recipe {self.name}: channels/convs/patch/batch out of range")
        if not (self.lr > 0 and self.minutes > 0 and self.l2_minutes >= 0):
            raise ConfigError(f"recipe {self.name}: lr and minutes must be positive, l2_minutes not negative")
        for i, st in enumerate(self.stages, 1):
            shrinks = st.convs is not None and st.convs < self.stage(i - 1).convs
            if shrinks or min(st.steps, st.l2_steps) < 0 or st.steps + st.l2_steps == 0 or \
                    (st.lr is not None and not st.lr > 0):
                raise ConfigError(f"recipe {self.name}: stage {i} must keep or grow the depth and train "
                                  f"a positive number of steps at a positive rate")
        lo, hi = self.quality_range
        if not 1 <= lo <= hi <= 100:
            raise ConfigError(f"recipe {self.name}: JPEG quality range {self.quality_range} not in 1..100")

    def stage(self, i: int) -> Recipe:
        """The recipe of run ``i`` (0: the first, the recipe itself; i >= 1: ``stages[i - 1]``)."""
        if i == 0:
            return self
        st = self.stages[i - 1]
        own = {k: getattr(st, k) for k in STAGE_OPTIONS if getattr(st, k) is not None}
        return replace(self, convs=st.convs or self.stage(i - 1).convs, lr=st.lr or self.lr, stages=(), **own)

    @property
    def base(self) -> str:
        return "identity" if self.scale == 1 else "nearest"


STAGE_OPTIONS = ("batch", "patch", "y_loss", "colour_perm")  # a stage's own training options (None: the recipe's)

RECIPES: dict[str, Recipe] = {}


def register(r: Recipe) -> Recipe:
    if r.name in RECIPES:
        raise ConfigError(f"recipe {r.name!r} registered twice")
    RECIPES[r.name] = r
    return r


# Budgets are those of the bundled files. sr-x2, sr-x2-rt, sr-x3, sr-x4 and the first denoise run were
# trained on one H100 shared by six runs at once (~90-125 steps/s each: 19 + 2 minutes is 100k-140k +
# 10k-15k steps; training/README.md gives the step counts, which `--steps` / `--l2-steps` reproduce on any
# machine). dejpeg's and enhance-x2's first runs on the project's 2-core CPU (4-5 steps/s). Later stages
# (step budgets) are the runs that made the bundled file from the one before: see training/README.md.
# 8 convs x 28 channels: 46k params, receptive field 17.
register(Recipe("sr-x2", "sr", 2, channels=28, convs=8, patch=40, minutes=19, l2_minutes=2, max_params=50_000))
# 6 convs x 24 channels: 24k MACs per input pixel.
register(Recipe("sr-x2-rt", "sr", 2, channels=24, convs=6, patch=40, minutes=19, l2_minutes=2, max_macs=25_000))
register(Recipe("sr-x3", "sr", 3, channels=28, convs=7, patch=32, minutes=19, l2_minutes=2, max_params=50_000))
register(Recipe("sr-x4", "sr", 4, channels=28, convs=7, patch=24, minutes=19, l2_minutes=2, max_params=50_000))
# Full-resolution networks: compute per pixel = params, so they stay under the 100k cap.
# denoise: 8 x 32 (57k params, receptive field 17) on the H100, grown to 12 x 32 (94k, RF 25) there
# (18 + 2 min beside four other runs), then an L2 fine-tune (5.5 min beside one other); then, on larger
# batches of larger patches (9 + 6 min, then L2 alone for 7.6 min at lr 1e-4, then patch 96 for 13 + 10 min,
# each beside three other runs).
register(Recipe("denoise", "denoise", 1, channels=32, convs=8, patch=48, minutes=19, l2_minutes=2, max_params=100_000,
                stages=(Stage(convs=12, lr=3e-4, steps=57994, l2_steps=6515), Stage(l2_steps=25279),
                        Stage(lr=3e-4, batch=64, patch=64, steps=20328, l2_steps=13643),
                        Stage(batch=128, patch=64, l2_steps=10040),
                        Stage(lr=3e-4, batch=64, patch=96, steps=13521, l2_steps=10284))))
# dejpeg: the L1 run's export fine-tuned with L2 (19.3 min on the 2-core CPU).
register(Recipe("dejpeg", "dejpeg", 1, channels=32, convs=8, patch=48, minutes=213, max_params=100_000,
                stages=(Stage(l2_steps=6000),)))
# enhance-x2: 9 x 32 on the CPU (L1 230 min, then L2 12,000 steps in 39.5 min), grown to 12 x 32 (97k
# params, RF 25) on the H100 (18 + 2 min beside four other runs), then L2 there (5.5 min beside one other);
# then with the luma loss and channel permutation, batch 32 (9 + 6 min, then 4 + 3.6 min, then on patches of 96
# for 13 + 10 min, beside three others).
register(Recipe("enhance-x2", "enhance", 2, channels=32, convs=9, patch=40, minutes=230, max_params=100_000,
                stages=(Stage(l2_steps=12000), Stage(convs=12, lr=3e-4, steps=77569, l2_steps=8858),
                        Stage(l2_steps=35440),
                        Stage(lr=3e-4, batch=32, y_loss=3, colour_perm=1, steps=21608, l2_steps=14061),
                        Stage(lr=3e-4, batch=32, y_loss=3, colour_perm=1, steps=9362, l2_steps=9544),
                        Stage(lr=3e-4, batch=32, patch=96, y_loss=3, colour_perm=1, steps=10956, l2_steps=8749))))

def get(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise ConfigError(f"no recipe {name!r}; known: {', '.join(RECIPES)}") from None
