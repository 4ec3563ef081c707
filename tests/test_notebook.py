"""The Colab / Cloud TPU notebook runs headless on CPU: it converts a tiny diffusers release from a
local path, encodes and decodes a clip on all devices, plots rate and quality, and shows frames; its
Hub cell fetches a tiny release from a Hub cache (offline) and converts it in one command."""
import json
import os
import sys

import nbclient  # requirements-dev.txt
import nbformat

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, "notebooks", "gvc_jax_colab.ipynb")


def _tiny_release(root):
    import diffusers
    import torch

    sys.path.insert(0, os.path.dirname(__file__))
    from test_convert import COMMON, EXTRA, VAE_KW

    torch.manual_seed(0)
    diffusers.WanTransformer3DModel(**COMMON, **EXTRA["t2v"]).eval().save_pretrained(root / "transformer")
    diffusers.AutoencoderKLWan(**VAE_KW).eval().save_pretrained(root / "vae")
    return root


def test_notebook_runs_headless_with_a_converted_tiny_model(tmp_path, monkeypatch):
    release = _tiny_release(tmp_path / "Wan2.1-tiny-diffusers")
    out = tmp_path / "out"
    env = {"GVC_CHECKPOINT": str(release), "GVC_PRESET": "tiny-t2v", "GVC_OUT": str(out), "GVC_REPO": REPO,
           "GVC_FRAMES": "17", "GVC_SIZE": "64x64", "GVC_ATOMS": "2,8", "GVC_STEPS": "4", "GVC_GOP_FRAMES": "9",
           "GVC_HEADLESS": "1", "JAX_PLATFORMS": "cpu"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": os.path.join(REPO, "notebooks")}}).execute()
    rows = json.loads((out / "results.json").read_text())
    assert [r["M"] for r in rows] == [2, 8] and all(r["gops"] == 2 for r in rows)
    assert rows[0]["bytes"] < rows[1]["bytes"]  # more atoms, more bytes
    assert (out / "model" / "gvc_model.json").exists()
    assert (out / "rate_quality.png").stat().st_size > 1000 and (out / "frames.png").stat().st_size > 1000
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "model: tiny-t2v" in printed


def test_notebook_hub_cell_converts_a_cached_release_offline(tmp_path, monkeypatch):
    """Step 3b with GVC_HUB=hf:ORG/NAME, HF_HUB_OFFLINE=1 and the release in a temporary Hub cache: the
    install, model and load cells run as on Colab, and the model is the converted Hub release."""
    sys.path.insert(0, os.path.dirname(__file__))
    from test_release import _hub_cache, make_release

    _hub_cache(tmp_path / "hf", "Wan-AI/Wan-tiny-i2v", make_release(tmp_path / "release", "i2v"))
    out = tmp_path / "out"
    env = {"GVC_HUB": "hf:Wan-AI/Wan-tiny-i2v", "GVC_DTYPE": "float32", "GVC_OUT": str(out), "GVC_REPO": REPO,
           "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "JAX_PLATFORMS": "cpu", "GVC_HEADLESS": "1"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("GVC_CHECKPOINT", raising=False)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    hub = [i for i, c in enumerate(code) if "GVC_HUB" in c.source]
    assert len(hub) == 1 and "weights_convert" in code[hub[0]].source
    nb.cells = code[:hub[0] + 2]  # install, devices, local checkpoint (none), Hub, load
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": os.path.join(REPO, "notebooks")}}).execute()
    assert json.loads((out / "model" / "gvc_model.json").read_text())["name"] == "Wan-tiny-i2v"
    printed = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "model: Wan-tiny-i2v" in printed
