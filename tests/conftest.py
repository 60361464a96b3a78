import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    # workers share the cores: each takes its share of threads (and so do the kernels and
    # interpreters it starts), or they slow each other down many times over
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module", autouse=True)
def module_cache(tmp_path_factory, request):
    """Each test module gets a QFORMER_LITE_CACHE of its own for all its tests: none finds the
    cache filled by another module, and nothing is written to the user's cache."""
    folder = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1] + "_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QFORMER_LITE_CACHE", str(folder))
        yield folder
