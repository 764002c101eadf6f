"""The bundled models: resolve a name like 'sr-x2' to the best file this machine can run."""
from __future__ import annotations

import importlib.util
from pathlib import Path

from ..errors import ModelFormatError

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


def resolve(model: str | Path) -> Path:
    """A path that exists, or a bundled model's best file for the engines installed."""
    p = Path(model)
    if p.exists():
        return p
    files = bundled().get(str(model))
    if not files:
        names = ", ".join(sorted(bundled())) or "none"
        raise ModelFormatError(f"{model}: no such model file and no bundled model of that name (bundled: {names})")
    engines = available_engines()
    for f in files:
        if ("litert" if f.suffix == ".tflite" else "onnxruntime") in engines:
            return f
    return files[0]  # opening it will name the extra to install
