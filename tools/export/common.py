"""Shared helpers for the export / parity / TensorRT tools: reports, hashes, comparisons.

These tools are run by hand on a machine with the heavy dependencies (nemo_toolkit, tensorrt);
nothing under ``src/`` imports them. Every tool writes one JSON report.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib
import json
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")


def versions(*modules: str) -> dict[str, str]:
    """Installed versions of ``modules`` ("missing" when not importable)."""
    found = {"python": platform.python_version()}
    for name in modules:
        try:
            found[name] = str(getattr(importlib.import_module(name), "__version__", "unknown"))
        except ImportError:
            found[name] = "missing"
    return found


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(4 << 20):
            digest.update(block)
    return digest.hexdigest()


def write_report(path: Path, report: dict[str, Any]) -> None:
    """The report as indented JSON, stamped with time, host and command line."""
    stamped = {"created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
               "host": platform.node(), "command": " ".join(sys.argv), **report}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(stamped, indent=2, default=_jsonable))
    print(f"report: {path}")


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def compare(reference: np.ndarray, candidate: np.ndarray, *, atol: float, rtol: float = 0.0,
            argmax_axis: int | None = None) -> dict[str, Any]:
    """Numeric agreement of two arrays: max/mean absolute and max relative difference, cosine,
    optional argmax agreement along an axis, and ``ok`` against ``atol + rtol * |ref|``."""
    ref = np.asarray(reference, dtype=np.float64)
    got = np.asarray(candidate, dtype=np.float64)
    if ref.shape != got.shape:
        return {"ok": False, "error": f"shape {got.shape} != reference {ref.shape}"}
    diff = np.abs(ref - got)
    result: dict[str, Any] = {
        "shape": list(ref.shape),
        "max_abs": float(diff.max(initial=0.0)),
        "mean_abs": float(diff.mean()) if diff.size else 0.0,
        "max_rel": float((diff / np.maximum(np.abs(ref), 1e-6)).max(initial=0.0)),
        "cosine": float((ref * got).sum() / max(np.linalg.norm(ref) * np.linalg.norm(got),
                                                 1e-30)),
        "ok": bool((diff <= atol + rtol * np.abs(ref)).all()),
        "atol": atol, "rtol": rtol,
    }
    if argmax_axis is not None:
        agree = ref.argmax(axis=argmax_axis) == got.argmax(axis=argmax_axis)
        result["argmax_agreement"] = float(agree.mean()) if agree.size else 1.0
    return result


def onnx_check(path: Path) -> dict[str, Any]:
    """``onnx.checker`` on a file (by path, so >2 GB models with external data work)."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=False)
        model = onnx.load(str(path), load_external_data=False)
        return {"ok": True, "opset": [f"{o.domain or 'ai.onnx'}:{o.version}"
                                      for o in model.opset_import],
                "inputs": [i.name for i in model.graph.input],
                "outputs": [o.name for o in model.graph.output]}
    except Exception as exc:  # onnx raises ValidationError and friends
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}


def speech(paths: list[Path] | None) -> list[tuple[str, np.ndarray]]:
    """Named 16 kHz float32 signals: the given files, else the LibriVox test clips."""
    sys.path.insert(0, str(ROOT / "src"))
    from voxgate.audio import decode_audio

    files = paths or sorted(LIBRIVOX.glob("*.wav"))
    if not files:
        raise SystemExit("no audio: pass --audio FILE... or install pocketsphinx-testdata")
    return [(p.name, decode_audio(p)) for p in files]


JOINT_OUTPUTS = ["outputs", "output_states_1", "output_states_2"]


def joint_feed(frames: np.ndarray, targets: np.ndarray, state1: np.ndarray,
               state2: np.ndarray) -> dict[str, np.ndarray]:
    """Decoder-joint inputs, named and shaped as the NeMo export takes them, for ``n`` rows of
    one frame each (``frames [n, D]``, ``targets [n]``, states ``[L, n, H]``)."""
    n = frames.shape[0]
    return {"encoder_outputs": np.ascontiguousarray(frames)[:, :, None],
            "targets": np.asarray(targets, np.int32).reshape(n, 1),
            "target_length": np.ones(n, np.int32),
            "input_states_1": np.ascontiguousarray(state1, np.float32),
            "input_states_2": np.ascontiguousarray(state2, np.float32)}


def random_joint_steps(frames: np.ndarray, classes: int, layers: int, hidden: int, steps: int,
                       seed: int = 0) -> dict[str, np.ndarray]:
    """``steps`` decoder-joint inputs: real encoder frames, random previous tokens and states."""
    rng = np.random.default_rng(seed)
    state = rng.normal(scale=0.5, size=(2, layers, steps, hidden)).astype(np.float32)
    return joint_feed(frames[rng.integers(0, len(frames), steps)],
                      rng.integers(0, classes, steps), state[0], state[1])
