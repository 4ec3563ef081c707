"""Original Wan2.1 key names -> diffusers key names, as anchored regex -> template rules.

Each rule is a fully anchored pattern and a template (``re`` replacement string or a function of
the match). A key must match exactly one rule, and every rule that applies to the model (e.g.
image-conditioning rules only for I2V/FLF2V) must match at least once; anything else raises
``CheckpointError``. After renaming, the single diffusers -> Flax path does the rest
(docs/method_notes.md §Checkpoint layouts).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Sequence, Set, Union

from gvc_jax.models.checkpoint import raise_problems
from gvc_jax.models.configs import DiTConfig, VAEConfig

Template = Union[str, Callable[[re.Match], str]]


@dataclass(frozen=True)
class Rule:
    """``pattern`` (anchored with ^...$ here) -> ``template``; required when ``when`` applies."""

    pattern: str
    template: Template
    when: str = "always"  # a tag; "optional" rules never need to match

    def regex(self) -> re.Pattern:
        return re.compile(f"^(?:{self.pattern})$")

    def apply(self, m: re.Match) -> str:
        return self.template(m) if callable(self.template) else m.expand(self.template)


def rename_keys(keys: Iterable[str], rules: Sequence[Rule], tags: Set[str], what: str) -> Dict[str, str]:
    """{new_key: old_key}. Raises CheckpointError listing keys matching no rule or several rules,
    required rules (tag in ``tags`` or "always") that matched nothing, and colliding targets."""
    compiled = [(r, r.regex()) for r in rules]
    hits = {r.pattern: 0 for r in rules}
    out: Dict[str, str] = {}
    problems: List[str] = []
    for key in sorted(keys):
        matches = [(r, m) for r, rx in compiled for m in [rx.match(key)] if m]
        if not matches:
            problems.append(f"unused source key {key!r} (no rename rule matches it)")
            continue
        if len(matches) > 1:
            problems.append(f"key {key!r} matches several rename rules: {[r.pattern for r, _ in matches]}")
            continue
        rule, m = matches[0]
        hits[rule.pattern] += 1
        try:
            new = rule.apply(m)
        except ValueError as e:
            problems.append(f"source key {key!r}: {e}")
            continue
        if new in out:
            problems.append(f"source keys {out[new]!r} and {key!r} both rename to {new!r}")
            continue
        out[new] = key
    for r in rules:
        if hits[r.pattern] == 0 and (r.when == "always" or r.when in tags):
            problems.append(f"no source key matches rename rule /{r.pattern}/ (required for this model)")
    raise_problems(problems, what)
    return out


# ----------------------------------------------------------------------------- DiT

_ATTN = {"q": "to_q", "k": "to_k", "v": "to_v", "o": "to_out.0"}
_IMG_EMB = {"0": "norm1", "1": "ff.net.0.proj", "3": "ff.net.2", "4": "norm2"}
_WB = r"(weight|bias)"

DIT_RULES = (
    Rule(rf"patch_embedding\.{_WB}", r"patch_embedding.\1"),
    Rule(rf"time_embedding\.0\.{_WB}", r"condition_embedder.time_embedder.linear_1.\1"),
    Rule(rf"time_embedding\.2\.{_WB}", r"condition_embedder.time_embedder.linear_2.\1"),
    Rule(rf"text_embedding\.0\.{_WB}", r"condition_embedder.text_embedder.linear_1.\1"),
    Rule(rf"text_embedding\.2\.{_WB}", r"condition_embedder.text_embedder.linear_2.\1"),
    Rule(rf"time_projection\.1\.{_WB}", r"condition_embedder.time_proj.\1"),
    Rule(rf"head\.head\.{_WB}", r"proj_out.\1"),
    Rule(r"head\.modulation", "scale_shift_table"),
    Rule(r"blocks\.(\d+)\.modulation", r"blocks.\1.scale_shift_table"),
    Rule(rf"blocks\.(\d+)\.self_attn\.([qkvo])\.{_WB}", lambda m: f"blocks.{m[1]}.attn1.{_ATTN[m[2]]}.{m[3]}"),
    Rule(r"blocks\.(\d+)\.self_attn\.norm_([qk])\.weight", r"blocks.\1.attn1.norm_\2.weight"),
    Rule(rf"blocks\.(\d+)\.cross_attn\.([qkvo])\.{_WB}", lambda m: f"blocks.{m[1]}.attn2.{_ATTN[m[2]]}.{m[3]}"),
    Rule(r"blocks\.(\d+)\.cross_attn\.norm_([qk])\.weight", r"blocks.\1.attn2.norm_\2.weight"),
    Rule(rf"blocks\.(\d+)\.cross_attn\.([kv])_img\.{_WB}", r"blocks.\1.attn2.add_\2_proj.\3", when="image"),
    Rule(r"blocks\.(\d+)\.cross_attn\.norm_k_img\.weight", r"blocks.\1.attn2.norm_added_k.weight", when="image"),
    # The reference's affine cross-attention norm is norm3; diffusers calls it norm2 (and vice versa).
    Rule(rf"blocks\.(\d+)\.norm3\.{_WB}", r"blocks.\1.norm2.\2", when="cross_attn_norm"),
    Rule(rf"blocks\.(\d+)\.norm2\.{_WB}", r"blocks.\1.norm3.\2", when="optional"),
    Rule(rf"blocks\.(\d+)\.ffn\.0\.{_WB}", r"blocks.\1.ffn.net.0.proj.\2"),
    Rule(rf"blocks\.(\d+)\.ffn\.2\.{_WB}", r"blocks.\1.ffn.net.2.\2"),
    Rule(rf"img_emb\.proj\.([0134])\.{_WB}", lambda m: f"condition_embedder.image_embedder.{_IMG_EMB[m[1]]}.{m[2]}",
         when="image"),
    Rule(r"img_emb\.emb_pos", "condition_embedder.image_embedder.pos_embed", when="pos_embed"),
)


def dit_tags(cfg: DiTConfig) -> Set[str]:
    tags = set()
    if cfg.image_dim is not None:
        tags.add("image")
    if cfg.pos_embed_seq_len:
        tags.add("pos_embed")
    if cfg.cross_attn_norm:
        tags.add("cross_attn_norm")
    return tags


def rename_dit(keys: Iterable[str], cfg: DiTConfig) -> Dict[str, str]:
    """{diffusers_key: original_key} for an original-layout Wan2.1 DiT checkpoint."""
    return rename_keys(keys, DIT_RULES, dit_tags(cfg), "original DiT checkpoint")


# ----------------------------------------------------------------------------- VAE

_RES = {"0": "norm1", "2": "conv1", "3": "norm2", "6": "conv2"}
_RES_PAT = r"residual\.([0236])\.(weight|bias|gamma)|shortcut\.(weight|bias)"


def _res_leaf(m: re.Match, g: int) -> str:
    """Residual-block tail: groups g, g+1 (residual index, leaf) or g+2 (shortcut leaf)."""
    if m[g + 2]:
        return f"conv_shortcut.{m[g + 2]}"
    return f"{_RES[m[g]]}.{m[g + 1]}"


def vae_rules(num_res_blocks: int) -> tuple:
    """Rules for a VAE whose decoder stages hold ``num_res_blocks + 1`` residual blocks and one
    upsampler each, i.e. ``decoder.upsamples.k`` -> ``up_blocks.(k // s)`` with s = num_res_blocks + 2."""
    s = num_res_blocks + 2

    def up_res(m):
        k = int(m[1])
        if k % s == s - 1:
            raise ValueError(f"decoder.upsamples.{k} is an upsampler position (stride {s}), not a residual block")
        return f"decoder.up_blocks.{k // s}.resnets.{k % s}.{_res_leaf(m, 2)}"

    def up_sample(m):
        k = int(m[1])
        if k % s != s - 1:
            raise ValueError(f"decoder.upsamples.{k} is a residual-block position (stride {s}), not an upsampler")
        return f"decoder.up_blocks.{k // s}.upsamplers.0.{m[2]}.{m[3]}"

    return (
        Rule(rf"conv1\.{_WB}", r"quant_conv.\1"),
        Rule(rf"conv2\.{_WB}", r"post_quant_conv.\1"),
        Rule(rf"(encoder|decoder)\.conv1\.{_WB}", r"\1.conv_in.\2"),
        Rule(r"(encoder|decoder)\.head\.0\.gamma", r"\1.norm_out.gamma"),
        Rule(rf"(encoder|decoder)\.head\.2\.{_WB}", r"\1.conv_out.\2"),
        Rule(rf"(encoder|decoder)\.middle\.([02])\.(?:{_RES_PAT})",
             lambda m: f"{m[1]}.mid_block.resnets.{int(m[2]) // 2}.{_res_leaf(m, 3)}"),
        Rule(r"(encoder|decoder)\.middle\.1\.(norm\.gamma|to_qkv\.weight|to_qkv\.bias|proj\.weight|proj\.bias)",
             r"\1.mid_block.attentions.0.\2"),
        Rule(rf"encoder\.downsamples\.(\d+)\.(?:{_RES_PAT})",
             lambda m: f"encoder.down_blocks.{m[1]}.{_res_leaf(m, 2)}"),
        Rule(rf"encoder\.downsamples\.(\d+)\.(resample\.1|time_conv)\.{_WB}", r"encoder.down_blocks.\1.\2.\3"),
        Rule(rf"decoder\.upsamples\.(\d+)\.(?:{_RES_PAT})", up_res),
        Rule(rf"decoder\.upsamples\.(\d+)\.(resample\.1|time_conv)\.{_WB}", up_sample),
    )


def rename_vae(keys: Iterable[str], cfg: VAEConfig) -> Dict[str, str]:
    """{diffusers_key: original_key} for an original-layout Wan2.1 VAE (``Wan2.1_VAE.pth``)."""
    return rename_keys(keys, vae_rules(cfg.num_res_blocks), set(), "original VAE checkpoint")
