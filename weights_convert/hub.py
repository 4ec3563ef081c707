"""A Wan2.1 release from the Hugging Face Hub: ``hf:ORG/NAME[@REVISION]`` -> a local snapshot directory.

``python -m weights_convert release hf:Wan-AI/Wan2.1-T2V-1.3B-Diffusers --out DIR`` fetches the
release with ``huggingface_hub.snapshot_download`` and converts the snapshot as it converts a local
directory. Only the files the conversion reads are fetched (``ALLOW_PATTERNS``: configs, safetensors
and their indexes, the original layout's ``.pth`` files, the umT5 tokenizer; not the ``.bin``
duplicates, READMEs or example media). A download that stops is resumed by the next run (the Hub
cache keeps the partial files).

The Hub's own environment is honoured, read when the command runs: ``HF_HUB_OFFLINE=1`` uses the
local cache only (never the network); the cache is ``HF_HUB_CACHE``, else ``HF_HOME/hub``, else
``~/.cache/huggingface/hub`` (``XDG_CACHE_HOME`` respected); ``HF_TOKEN`` / a stored login reach
gated repositories (huggingface_hub reads them itself). A release that is neither reachable nor
cached is a one-line error naming the repository and what to do.
"""
from __future__ import annotations

import os
import re
from typing import Callable, List, Optional, Tuple

PREFIX = "hf:"
# What find_release / convert_release read, in either layout (a repository holds only one of them).
ALLOW_PATTERNS: List[str] = [
    # diffusers layout (Wan-AI/Wan2.1-*-Diffusers)
    "model_index.json",
    *[f"{part}/{pattern}" for part in ("transformer", "vae", "text_encoder", "image_encoder")
      for pattern in ("config.json", "*.safetensors", "*.safetensors.index.json")],
    "tokenizer/tokenizer.json",
    # original layout (Wan-AI/Wan2.1-*)
    "config.json",
    "diffusion_pytorch_model*.safetensors",
    "diffusion_pytorch_model*.safetensors.index.json",
    "Wan2.1_VAE.pth",
    "models_t5_umt5-xxl-enc-bf16.pth",
    "google/umt5-xxl/tokenizer.json",
    "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth",
]
_REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_TRUE = {"1", "on", "yes", "true"}


class HubError(ValueError):
    """The release cannot be had from the Hub or the cache (one line, says what to do)."""


def is_hub_source(src: str) -> bool:
    return str(src).startswith(PREFIX)


def parse_source(src: str) -> Tuple[str, Optional[str]]:
    """``"hf:ORG/NAME@REV"`` -> ("ORG/NAME", "REV"); no ``@REV`` -> revision None (the main branch)."""
    if not is_hub_source(src):
        raise HubError(f"{src!r} is not a Hub source (hf:ORG/NAME[@REVISION])")
    spec = src[len(PREFIX):]
    repo, sep, revision = spec.partition("@")
    if not _REPO_RE.match(repo) or (sep and not revision) or "@" in revision:
        raise HubError(f"{src!r}: a Hub source is hf:ORG/NAME[@REVISION], e.g. hf:Wan-AI/Wan2.1-T2V-1.3B-Diffusers")
    return repo, (revision or None)


def offline() -> bool:
    """``HF_HUB_OFFLINE`` set to 1 / on / yes / true (read now, not when huggingface_hub was imported)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def cache_dir() -> str:
    """The Hub cache: ``HF_HUB_CACHE``, else ``HF_HOME/hub``, else ``$XDG_CACHE_HOME/huggingface/hub``
    (``~/.cache`` without XDG), as huggingface_hub resolves it, but read when the command runs."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return os.path.join(os.path.expanduser(home), "hub")


def _what_to_do(repo: str, revision: Optional[str]) -> str:
    pinned = f"@{revision}" if revision else ""
    return (f"run once with network access (HF_HUB_OFFLINE unset) to download it into {cache_dir()}, or download "
            f"it elsewhere (huggingface-cli download {repo}{' --revision ' + revision if revision else ''}) and "
            f"pass that directory instead of hf:{repo}{pinned}")


def fetch_release(src: str, *, quiet: bool = False, log: Optional[Callable[[str], None]] = None) -> Tuple[str, str]:
    """Download (or find in the cache) the release ``hf:ORG/NAME[@REV]``; returns (snapshot directory,
    default model name NAME). HubError (one line) when it cannot be had."""
    repo, revision = parse_source(src)
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (
            GatedRepoError,
            HfHubHTTPError,
            HFValidationError,
            IncompleteSnapshotError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError:
        raise HubError(f"hf:{repo} needs huggingface_hub (pip install -r requirements-dev.txt)") from None
    where = "the local Hub cache" if offline() else "the Hugging Face Hub"
    if log:
        log(f"hf:{repo}{'@' + revision if revision else ''} from {where} ({cache_dir()})")
    try:
        path = snapshot_download(repo, revision=revision, cache_dir=cache_dir(), allow_patterns=ALLOW_PATTERNS,
                                 local_files_only=offline(),
                                 tqdm_class=_silent_tqdm() if quiet else None)
    except RevisionNotFoundError:
        raise HubError(f"hf:{repo} has no revision {revision!r} on the Hub") from None
    except GatedRepoError:
        raise HubError(f"hf:{repo} is gated: accept its licence on huggingface.co and log in "
                       "(huggingface-cli login or HF_TOKEN)") from None
    except RepositoryNotFoundError:
        raise HubError(f"hf:{repo} is not a repository on the Hugging Face Hub (or it is private: log in)") from None
    except IncompleteSnapshotError:
        raise HubError(f"hf:{repo} is only partly in {cache_dir()} and the Hub cannot be reached: "
                       + _what_to_do(repo, revision)) from None
    except LocalEntryNotFoundError:
        why = "HF_HUB_OFFLINE is set" if offline() else "the Hub cannot be reached"
        raise HubError(f"hf:{repo}{'@' + revision if revision else ''} is not in {cache_dir()} and {why}: "
                       + _what_to_do(repo, revision)) from None
    except HFValidationError as err:
        raise HubError(f"hf:{repo}: {str(err).splitlines()[0]}") from None
    except HfHubHTTPError as err:
        raise HubError(f"hf:{repo}: the Hub answered {str(err).splitlines()[0]}") from None
    return str(path), repo.split("/", 1)[1]


def _silent_tqdm():
    from tqdm.auto import tqdm

    class Silent(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return Silent
