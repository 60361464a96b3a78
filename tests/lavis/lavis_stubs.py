"""Stand-ins for the parts of LAVIS 1.0.2 that its stage-1 model imports but never runs here.

``install()`` puts them in ``sys.modules`` before anything of LAVIS is imported; site-packages
is left as pip installed it.

- ``lavis`` and ``lavis.models``: their ``__init__`` imports every model, dataset, processor
  and task of LAVIS (and with them opencv, decord, spacy, ...). Empty packages over the same
  folders let the real submodules load one at a time.
- ``lavis.models.eva_vit``, ``lavis.models.clip_vit``: the vision towers; the reference feeds
  image embeddings directly.
- ``lavis.common.utils`` (path and URL helpers: pandas, iopath, torchvision) and
  ``timm.models.hub`` (downloads, used by ``dist_utils.download_cached_file``): nothing is
  downloaded.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
import types
from pathlib import Path


def _module(name: str, path: Path | None = None, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    if path is not None:  # a package: its real submodules are found under path
        module.__path__ = [str(path)]
        module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
        module.__spec__.submodule_search_locations = module.__path__
    module.__dict__.update(attrs)
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    if parent in sys.modules:
        setattr(sys.modules[parent], child, module)
    return module


def _unavailable(what: str):
    def refuse(*args, **kwargs):
        raise RuntimeError(f"{what} is stubbed out in the LAVIS reference run (see tests/lavis/lavis_stubs.py)")

    return refuse


def install() -> None:
    if "lavis" in sys.modules:
        raise RuntimeError("install the stubs before importing anything from lavis")
    root = Path(importlib.util.find_spec("lavis").submodule_search_locations[0])  # finds, does not import
    _module("lavis", root)
    _module("lavis.common", root / "common")
    _module("lavis.models", root / "models")
    _module("lavis.common.utils", get_abs_path=_unavailable("get_abs_path"), is_url=lambda _: False)
    _module("lavis.models.eva_vit", create_eva_vit_g=_unavailable("EVA ViT-g"),
            convert_weights_to_fp16=_unavailable("convert_weights_to_fp16"))
    _module("lavis.models.clip_vit", create_clip_vit_L=_unavailable("CLIP ViT-L"))
    _module("timm", Path("/nonexistent"))
    _module("timm.models", Path("/nonexistent"))
    _module("timm.models.hub", get_cache_dir=_unavailable("timm's cache"),
            download_cached_file=_unavailable("downloading"))
    # The registry's decorator checks models against lavis.models.BaseModel.
    sys.modules["lavis.models"].BaseModel = importlib.import_module("lavis.models.base_model").BaseModel
