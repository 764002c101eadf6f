"""The model card: what a model file is, read from metadata embedded in the file itself.

Stored as UTF-8 JSON under the key ``edge_enhance.card``: ONNX ``metadata_props``, a TFLite
``metadata`` entry (its buffer holds the JSON), Core ML ``user_defined_metadata``.

``align`` is for networks that work at a reduced resolution inside (a stride-2 first conv, as
FFDNet): input height and width must be multiples of ``align``, and the network is translation-
equivariant only for shifts by multiples of it, so tiles start on multiples of ``align`` and the
tile margin is rounded up to one.

>>> c = ModelCard(name="sr-x2", task="sr", scale=2, receptive_field=15)
>>> c.margin
7
>>> ModelCard(name="dn", task="denoise", scale=1, receptive_field=33, align=2).margin
16
>>> ModelCard(name="dn", task="denoise", scale=1, receptive_field=35, align=4).margin
20
>>> ModelCard.from_json(c.to_json()) == c
True
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field

from .errors import ModelChoiceError, ModelFormatError

CARD_KEY = "edge_enhance.card"
TASKS = ("sr", "denoise", "dejpeg", "enhance")
LAYOUTS = ("nchw", "nhwc")
COLOURS = ("rgb", "y")  # y: a luma model, one channel (edge_enhance.ycbcr)
BASES = ("nearest", "identity", "bilinear")
# Fields a user must give on the command line for a model that carries no card.
REQUIRED_FIELDS = ("task", "scale", "receptive_field")
MAX_ALIGN = 64
MAX_RECEPTIVE_FIELD = 4097  # a small enhancement network sees tens of pixels; more is a corrupt or hostile card
MAX_TILE_PIXELS = 4096 * 4096  # a fixed model input (card tile, frozen engine shape): NPU tiles are far smaller


def strict_json(obj, **kw) -> str:
    """JSON that strict parsers (jq, browsers) accept: NaN and infinite floats (no SSIM asked, an
    identical image's PSNR) become null."""
    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(obj), allow_nan=False, **kw)


@dataclass(frozen=True)
class ModelCard:
    name: str
    task: str
    scale: int
    receptive_field: int  # side, in input pixels, of the window one output pixel depends on
    layout: str = "nchw"  # of the model's own input/output tensors
    input_range: tuple[float, float] = (0.0, 1.0)
    colour: str = "rgb"  # or "y": the model sees full-range BT.601 luma only, chroma is upscaled bicubic
    base: str = "nearest"  # what the learned residual is added to inside the network
    tile: tuple[int, int] | None = None  # fixed input (h, w) the model was built for, if any
    align: int = 1  # input height and width must be multiples of align; tiles start on multiples of align
    version: str = "1"
    params: int | None = None
    macs_per_pixel: int | None = None  # per input pixel
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self):
        _int = lambda v: isinstance(v, int) and not isinstance(v, bool)  # JSON true is not 1
        if self.task not in TASKS:
            raise ModelFormatError(f"model card: task {self.task!r} is not one of {', '.join(TASKS)}")
        if not (_int(self.scale) and 1 <= self.scale <= 8):
            raise ModelFormatError(f"model card: scale {self.scale!r} must be an integer 1..8")
        if not (_int(self.receptive_field) and 1 <= self.receptive_field <= MAX_RECEPTIVE_FIELD):
            raise ModelFormatError(f"model card: receptive_field {self.receptive_field!r} must be an integer "
                                   f"1..{MAX_RECEPTIVE_FIELD}")
        if self.layout not in LAYOUTS:
            raise ModelFormatError(f"model card: layout {self.layout!r} is not one of {', '.join(LAYOUTS)}")
        if self.base not in BASES:
            raise ModelFormatError(f"model card: base {self.base!r} is not one of {', '.join(BASES)}")
        if self.colour not in COLOURS:
            raise ModelFormatError(f"model card: colour {self.colour!r} is not one of {', '.join(COLOURS)}")
        lo, hi = self.input_range
        if not (lo < hi and math.isfinite(lo) and math.isfinite(hi)):
            raise ModelFormatError(f"model card: input_range {self.input_range!r} must be finite, low < high")
        if self.tile is not None and (len(self.tile) != 2 or not all(_int(v) and v >= 1 for v in self.tile)):
            raise ModelFormatError(f"model card: tile {self.tile!r} must be [height, width]")
        if self.tile is not None and self.tile[0] * self.tile[1] > MAX_TILE_PIXELS:
            raise ModelFormatError(f"model card: tile {self.tile[0]}x{self.tile[1]} is implausibly large "
                                   f"(over {MAX_TILE_PIXELS // 2**20} MP)")
        if not (_int(self.align) and 1 <= self.align <= MAX_ALIGN):
            raise ModelFormatError(f"model card: align {self.align!r} must be an integer 1..{MAX_ALIGN}")

    @property
    def margin(self) -> int:
        """Input pixels of context each side of a tile so its cropped centre is exact: the
        receptive-field radius, rounded up to a multiple of ``align`` so tiles stay aligned."""
        return -(-(self.receptive_field // 2) // self.align) * self.align

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["input_range"] = list(self.input_range)
        d["tile"] = list(self.tile) if self.tile else None
        return d

    def to_json(self) -> str:
        """Strict JSON: a non-finite figure (a lossless model's PSNR) is written as null."""
        return strict_json(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict, source: str = "model") -> "ModelCard":
        known = {f.name for f in dataclasses.fields(cls)}
        missing = [k for k in ("name",) + REQUIRED_FIELDS if k not in d]
        if missing:
            raise ModelFormatError(f"{source}: model card lacks {', '.join(missing)}")
        kw = {k: v for k, v in d.items() if k in known}
        try:
            kw["extra"] = {**d.get("extra", {}), **{k: v for k, v in d.items() if k not in known}}
            if "input_range" in kw:
                lo, hi = (float(v) for v in kw["input_range"])
                kw["input_range"] = (lo, hi)
            if kw.get("tile"):
                kw["tile"] = tuple(kw["tile"])
            for k in ("params", "macs_per_pixel"):
                if kw.get(k) is not None and not (isinstance(kw[k], int) and not isinstance(kw[k], bool)):
                    raise TypeError(f"{k} {kw[k]!r} is not an integer")
            return cls(**kw)
        except (TypeError, ValueError) as e:  # a field of the wrong shape: a list where a number goes, ...
            raise ModelFormatError(f"{source}: malformed model card: {e}") from None
        except ModelFormatError as e:  # __post_init__ knows the field, not the file
            raise ModelFormatError(f"{source}: {e}") from None

    @classmethod
    def from_json(cls, text: str | bytes, source: str = "model") -> "ModelCard":
        try:
            d = json.loads(text)
        except (ValueError, UnicodeDecodeError, RecursionError) as e:
            raise ModelFormatError(f"{source}: model card is not valid JSON ({e})") from None
        if not isinstance(d, dict):
            raise ModelFormatError(f"{source}: model card is not a JSON object")
        if _depth(d) > MAX_CARD_DEPTH:  # json reads 500 levels; copying or printing them ran out of stack
            raise ModelFormatError(f"{source}: model card is nested more than {MAX_CARD_DEPTH} levels deep")
        return cls.from_dict(d, source)


MAX_CARD_DEPTH = 32


def _depth(v, level: int = 0) -> int:
    """How deep lists and objects nest in ``v``, counted up to just past MAX_CARD_DEPTH."""
    if level > MAX_CARD_DEPTH or not isinstance(v, (dict, list)):
        return level
    items = v.values() if isinstance(v, dict) else v
    return max((_depth(x, level + 1) for x in items), default=level + 1)


def check_channels(source, c_in, c_out) -> None:
    """Refuse a model that is not 1 -> 1 channel (luma, colour "y") or 3 -> 3 (RGB); None: not known."""
    if c_in is None or (c_in in (1, 3) and c_out in (c_in, None)):
        return
    raise ModelFormatError(f"{source}: the model takes {c_in} channel(s) and returns {c_out}; edge-enhance runs "
                           "1 -> 1 (luma) or 3 -> 3 (RGB) channel models")


def add_card_arguments(parser, title: str, layout: bool = True) -> None:
    """The --card-* options, one definition for every command that takes a model without a card."""
    from .argtypes import number, value_range

    c = parser.add_argument_group("model card", title)  # the text as its description: argparse wraps that
    c.add_argument("--card-task", choices=TASKS, help="what the model does")
    c.add_argument("--card-scale", type=number(int, lo=1, hi=8), metavar="N", help="default: read off an .onnx graph")
    c.add_argument("--card-receptive-field", type=number(int, lo=1), metavar="N",
                   help="default: read off an .onnx graph")
    c.add_argument("--card-align", type=number(int, lo=1, hi=MAX_ALIGN), metavar="N",
                   help="input height and width must be multiples of N (e.g. 2 for a stride-2 first conv); "
                        "default: read off an .onnx graph, else 1")
    c.add_argument("--card-input-range", type=value_range, metavar="LO,HI",
                   help="what the model's pixels span (default 0,1; e.g. 0,255 for EDSR-style models)")
    if layout:
        c.add_argument("--card-layout", choices=LAYOUTS)


def missing_card_error(path) -> ModelChoiceError:
    return ModelChoiceError(
        f"{path}: the model has no edge-enhance card ({CARD_KEY} metadata); pass "
        "--card-task sr|denoise|dejpeg|enhance (an .onnx model's scale, receptive field and align are read off its "
        "graph when the convert extra is installed; otherwise add --card-scale N --card-receptive-field N, and "
        "--card-layout nchw|nhwc if not NCHW, --card-align N if input sides must be multiples of N)"
    )
