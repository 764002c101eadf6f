"""The bundled models: resolve a name like 'sr-x2' to the best file this machine can run."""
from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from ..errors import ModelChoiceError

log = logging.getLogger(__name__)
MODELS_DIR = Path(__file__).resolve().parent
DEFAULT_MODEL = "sr-x2"
_SUFFIXES = (".int8.tflite", ".tflite", ".onnx")  # int8 TFLite first: it is the fast path on a Pi


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def available_engines() -> set[str]:
    found = set()
    if _has("ai_edge_litert") or _has("tflite_runtime") or _has("tensorflow"):
        found.add("litert")
    if _has("onnxruntime"):
        found.add("onnxruntime")
    return found


def bundled() -> dict[str, list[Path]]:
    """{name: [files, best first]} of every model shipped in the package."""
    out: dict[str, list[Path]] = {}
    for f in sorted(MODELS_DIR.iterdir()):
        for suf in _SUFFIXES:
            if f.name.endswith(suf):
                out.setdefault(f.name[: -len(suf)], []).append(f)
                break
    for files in out.values():
        files.sort(key=lambda f: next(i for i, s in enumerate(_SUFFIXES) if f.name.endswith(s)))
    return out


ENGINE_OF_SUFFIX = {".tflite": "litert", ".onnx": "onnxruntime"}


def source_onnx(model: str | Path) -> Path:
    """The ONNX a tool (convert, quantize, prune) reads: a bare bundled name ('sr-x2') is its fp32 .onnx in the
    package, as everywhere a model is named (a file of that name here is not: ./sr-x2 names it); else the path."""
    p = Path(model)
    if str(model) == p.name and (MODELS_DIR / f"{model}.onnx").is_file():
        return resolve(str(model), "onnxruntime")  # which also says when a file of that name here is passed over
    return p


def default_output(src: Path, name: str) -> Path:
    """``name`` beside ``src``, or in the current folder for a bundled model: the package's folder is not the
    user's, and a quantised file written there would replace the bundled one of the same name."""
    return Path(name) if src.resolve().parent == MODELS_DIR else src.with_name(name)


def resolve(model: str | Path, engine: str | None = None) -> Path:
    """A bundled model's best file for the engines installed (or for ``engine``, the file that engine
    runs), for a bare bundled name ('sr-x2'), even where the current folder holds a file or folder of
    that name (``./sr-x2`` names that one: a stray folder left by ``-o sr-x2/`` broke every default
    run, a stray file replaced a --mode stage); a bundled file by its name ('sr-x2.onnx') where no such
    file is here; else a path that exists."""
    p = Path(model)
    bare = isinstance(model, str) and p.name == model
    files = bundled().get(str(model)) if bare else None
    if files and p.is_file():
        log.warning("%s: the bundled model is used, not the file of that name here (write ./%s for it)", model, model)
    if p.exists() and not files:
        return p
    if not files and bare and (MODELS_DIR / model).is_file() and any(model.endswith(s) for s in _SUFFIXES):
        return MODELS_DIR / model  # sr-x2.onnx: the bundled fp32 file
    if not files:
        names = ", ".join(sorted(bundled())) or "none"
        raise ModelChoiceError(f"{model}: no such model file and no bundled model of that name (bundled: {names})")
    if engine in ENGINE_OF_SUFFIX.values():
        for f in files:
            if ENGINE_OF_SUFFIX[f.suffix] == engine:
                return f
        raise ModelChoiceError(f"{model}: no bundled file of it runs on --engine {engine} "
                               f"(bundled: {', '.join(f.name for f in files)})")
    engines = available_engines()
    for f in files:
        if ENGINE_OF_SUFFIX[f.suffix] in engines:
            return f
    return files[0]  # opening it will name the extra to install
