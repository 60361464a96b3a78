"""Where the stand-in models and trained miniatures are kept between runs.

``$QFORMER_LITE_CACHE`` if set, else ``$XDG_CACHE_HOME/qformer_lite``, else
``~/.cache/qformer_lite``. Nothing is ever written inside the repository or the working
directory. Each entry is a folder named by a hash of everything that decides its contents
(configs and seed), so changing a setting builds a new entry instead of reusing a stale one.
Entries are written to a temporary folder and renamed into place: an interrupted build leaves
no half-written entry behind. While one process builds an entry it holds a lock on it, so that
a second process that needs the same entry (two chapters run at once) waits and reads it
instead of training it again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from safetensors.torch import load_file, save_file
from torch import nn

FORMAT_VERSION = 2  # bump when the meaning of a cached entry changes

# What decides each cached part: the fields of MiniatureConfig it is built from.
DEPENDS_ON = {
    "image-encoder": ("seed", "train_images", "data", "vision"),
    # T5 reads the training split's captions, which only these two of the data's fields decide
    "language-model": ("seed", "data.held_out_fraction", "data.split_seed", "language"),
    # the decoder-only stand-in: the same captions, and T5's corruptions of them
    "decoder-model": ("seed", "data.held_out_fraction", "data.split_seed", "decoder", "language.drop_prob",
                      "language.mask_prob", "language.empty_prob", "language.corruptions"),
    # stage 1 never meets the language model: a change to T5 leaves it where it is
    "stage1": ("seed", "train_images", "data", "vision", "qformer", "stage1"),
    "stage2": ("seed", "train_images", "data", "vision", "language", "qformer", "stage1", "stage2"),
    # chapter 10's runs on the decoder-only stand-in: from stage 1 (BLIP-2 OPT) or from stage 2
    # with T5 (MiniGPT-4), so everything chapter 7's run depends on, and the stand-in
    "decoder-run": ("seed", "train_images", "data", "vision", "language", "qformer", "stage1", "stage2", "decoder"),
    # chapter 11: a T5 that answers questions about the training images' captions, and the
    # instruction-tuning runs from stage 1
    "qa-language-model": ("seed", "train_images", "data", "language"),
    "instruct-run": ("seed", "train_images", "data", "vision", "language", "qformer", "stage1", "instruct"),
    # chapter 12: a T5 that rebuilds the training clips' captions, and the four video models on
    # the stage-1 Q-Former
    "clip-language-model": ("seed", "clips", "language"),
    "video-run": ("seed", "train_images", "data", "vision", "language", "qformer", "stage1", "clips", "video"),
    # a connector's entry names its stage 1 itself, when it has one (compare.cached_connector)
    "connector": ("seed", "train_images", "data", "vision", "language", "qformer", "stage2"),
}


def cache_dir() -> Path:
    root = os.environ.get("QFORMER_LITE_CACHE")
    if root:
        return Path(root).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "qformer_lite"


def entry_for(kind: str, config, **extra) -> Path:
    """The folder of one part of a run (``kind``, a key of ``DEPENDS_ON``) made with ``config``
    (a ``MiniatureConfig``): ``kind-<hash of the fields it depends on and extra>``."""
    settings = config.to_dict()
    spec = {name: _field(settings, name) for name in DEPENDS_ON[kind]} | extra
    blob = json.dumps({"format": FORMAT_VERSION, "kind": kind, **spec}, sort_keys=True, default=str)
    return cache_dir() / f"{kind}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def _field(settings: dict, name: str):
    for part in name.split("."):  # "data.split_seed" -> settings["data"]["split_seed"]
        settings = settings[part]
    return settings


def save_module(module: nn.Module, folder: Path, name: str = "model") -> None:
    """``name.safetensors``: the module's state dict (tied weights stored once per name)."""
    state = {k: v.detach().contiguous().clone() for k, v in module.state_dict().items()}
    save_file(state, str(folder / f"{name}.safetensors"))


def load_module(module: nn.Module, folder: Path, name: str = "model", strict: bool = True) -> nn.Module:
    state = load_file(str(folder / f"{name}.safetensors"))
    module.load_state_dict(state, strict=strict)
    return module


def write_atomically(final: Path, fill: Callable[[Path], None]) -> Path:
    """Run ``fill(tmp)`` on a fresh temporary folder beside ``final``, then rename it to ``final``."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        fill(tmp)
        if final.exists():  # another run finished first, or an old entry is being replaced
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def complete(folder: Path, names: tuple[str, ...]) -> bool:
    return folder.is_dir() and all((folder / n).is_file() for n in names)


@contextmanager
def building(folder: Path):
    """Held while this process reads or builds the entry ``folder``; another process waits here
    for it. Where ``fcntl`` is missing (Windows) or the cache cannot be written, it holds nothing."""
    try:
        import fcntl

        folder.parent.mkdir(parents=True, exist_ok=True)
        lock = open(folder.parent / f".{folder.name}.lock", "w")
    except (ImportError, OSError):
        yield
        return
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        yield


def cached_training(
    folder: Path, module: nn.Module, train: Callable[[], tuple[nn.Module, object]], use_cache: bool = True,
    trainable_only: bool = False,
) -> tuple[nn.Module, object, bool]:
    """``module`` and its training history, read from ``folder`` when the entry is complete;
    otherwise ``train()`` returns them and they are written there (atomically).

    ``trainable_only``: the entry holds only the parameters that require grad (stage 2, whose
    frozen encoder and T5 are cached on their own). Returns (module, history, from_cache).
    """
    if not use_cache:
        return *train(), False
    with building(folder):
        return _read_or_train(folder, module, train, trainable_only)


def _read_or_train(folder, module, train, trainable_only):
    names = ("model.safetensors", "history.json")
    if complete(folder, names):
        state = load_file(str(folder / names[0]))
        needed = {k for k, p in module.named_parameters() if p.requires_grad} if trainable_only else None
        try:
            missing, unexpected = module.load_state_dict(state, strict=False)
        except RuntimeError as err:  # a tensor of the wrong shape
            raise ValueError(f"cache entry {folder} does not fit this model: {err}") from None
        missing = sorted(set(missing) & needed) if trainable_only else missing
        if missing or unexpected:
            raise ValueError(f"cache entry {folder} does not fit this model: missing {missing}, unexpected {unexpected}")
        return module, json.loads((folder / names[1]).read_text()), True
    module, history = train()

    def fill(d: Path) -> None:
        if trainable_only:
            state = {k: p.detach().contiguous() for k, p in module.named_parameters() if p.requires_grad}
            save_file(state, str(d / names[0]))
        else:
            save_module(module, d)
        (d / names[1]).write_text(json.dumps(history))

    write_atomically(folder, fill)
    return module, history, False
