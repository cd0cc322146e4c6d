"""The DASG-MoE encoder: embeddings, blocks, classification and MLM heads (DESIGN.md §2).

Blocks are pre-LN by default, h = x + Attn(LN(x)), y = h + FFN(LN(h)); `norm_position="post"`
gives BERT's post-LN blocks, y = LN(h + FFN(h)) with h = LN(x + Attn(x)), so a pretrained
BERT-style encoder can be transferred without changing what it computes (`transfer.py`).
The FFN of each block is a dense FFN or an MoE layer (`moe.py`), chosen by the config.

Only real tokens are routed: the block flattens the non-padding positions to [T, D] before
the MoE layer and scatters the result back. The trace is assembled only when asked for.

Shape legend: B batch, L tokens, D model dim, T real tokens in the batch, V vocabulary.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import AttentionOutput, GroupedMultiHeadAttention
from .config import DasgConfig
from .moe import DASGMoE, MoEInput, MoEOutput, build_ffn
from .routers import RoutingOverrides
from .trace import AttentionMaps, RoutingRecord, RoutingTrace


@dataclass(frozen=True)
class ModelOutput:
    logits: Tensor  # [B, num_labels]
    loss: Tensor | None = None  # task loss + weighted auxiliary losses
    aux_losses: dict[str, Tensor] = field(default_factory=dict)  # unweighted; {} without grad
    trace: RoutingTrace | None = None  # only with trace=True
    flops: Tensor | None = None  # [B] FFN FLOPs executed for each example, all layers
    deep_decisions: Tensor | None = None  # [B] (token, layer) pairs sent to the deep tier
    tier_decisions: Tensor | None = None  # [B] (token, layer) pairs that went through a tier router
    expert_slots: Tensor | None = None  # [B] (token, layer, expert) computations in MoE layers
    moe_tokens: Tensor | None = None  # [B] (token, layer) pairs through MoE layers
    policy_log_prob: Tensor | None = None  # [B] log-prob of the in-band tier decisions taken


def normalise_importance(received: Tensor, mask: Tensor, special: Tensor) -> Tensor:
    """Importance I in [0, 1]: attention received, divided by the largest value among the
    sequence's real, non-special tokens ([CLS]/[SEP] soak up attention and would squash
    everyone else; they are left out of the normaliser and clipped at 1).
    received, mask, special: [B, L] -> [B, L]."""
    ordinary = mask & ~special
    scale = received.masked_fill(~ordinary, 0.0).amax(dim=1, keepdim=True)  # [B, 1]
    scale = torch.where(scale > 0, scale, received.masked_fill(~mask, 0.0).amax(1, keepdim=True))
    return (received / scale.clamp_min(1e-9)).clamp(0.0, 1.0)


class Embeddings(nn.Module):
    """Word + position + segment embeddings, LayerNorm, dropout (BERT layout)."""

    def __init__(self, cfg: DasgConfig) -> None:
        super().__init__()
        self.word = nn.Embedding(cfg.vocab_size, cfg.d_model, padding_idx=cfg.pad_token_id)
        self.position = nn.Embedding(cfg.max_len, cfg.d_model)
        self.segment = nn.Embedding(cfg.type_vocab_size, cfg.d_model)
        self.norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)
        for table in (self.word, self.position, self.segment):
            nn.init.normal_(table.weight, std=0.02)  # BERT's scale; N(0, 1) would blow up
            # the logits of the MLM decoder, which reuses the word embeddings

    def forward(self, input_ids: Tensor, token_type_ids: Tensor) -> Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.word(input_ids) + self.position(positions) + self.segment(token_type_ids)
        return self.dropout(self.norm(x))  # [B, L, D]


class Block(nn.Module):
    """Attention then FFN/MoE, each with a residual and LayerNorm."""

    def __init__(self, cfg: DasgConfig, layer: int) -> None:
        super().__init__()
        self.pre_norm = cfg.norm_position == "pre"
        self.attn_norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.attn = GroupedMultiHeadAttention(cfg)
        self.ffn_norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.ffn = build_ffn(cfg, layer)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, mask: Tensor, special: Tensor, need_stats: bool,
                need_maps: bool, routing: MoEInput) -> tuple[Tensor, AttentionOutput, MoEOutput]:
        """x: [B, L, D]; mask, special: [B, L] bool; `routing` carries the per-call routing
        settings (its x / importance / entropy are filled in here)."""
        attn = self.attn(self.attn_norm(x) if self.pre_norm else x, mask, need_stats, need_maps)
        h = x + self.dropout(attn.hidden)
        if not self.pre_norm:
            h = self.attn_norm(h)
        ffn_in = self.ffn_norm(h) if self.pre_norm else h  # [B, L, D]
        T = int(mask.sum())
        nan = torch.full((T,), float("nan"), device=x.device)
        importance = entropy = nan
        if attn.received is not None:
            importance = normalise_importance(attn.received.float(), mask, special)[mask]  # [T]
            entropy = attn.entropy.float()[mask]
        moe = self.ffn(dataclasses.replace(routing, x=ffn_in[mask], importance=importance,
                                           entropy=entropy))
        y = h + self.dropout(torch.zeros_like(h).masked_scatter(mask.unsqueeze(-1),
                                                                moe.out.to(h.dtype)))
        if not self.pre_norm:
            y = self.ffn_norm(y)
        return y, attn, moe


class DasgMoEModel(nn.Module):
    """Encoder for sequence classification with DASG-MoE (or baseline) routing."""

    def __init__(self, cfg: DasgConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embeddings = Embeddings(cfg)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.final_norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps) \
            if cfg.norm_position == "pre" else nn.Identity()
        self.pooler = nn.Linear(cfg.d_model, cfg.d_model)
        self.classifier = nn.Linear(cfg.d_model, cfg.num_labels)
        self.mlm_transform = nn.Linear(cfg.d_model, cfg.d_model)
        self.mlm_norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.mlm_bias = nn.Parameter(torch.zeros(cfg.vocab_size))  # decoder = word embeddings
        self.dropout = nn.Dropout(cfg.dropout)

    def _summary(self, hidden: Tensor, mask: Tensor) -> Tensor:
        """What the classification head reads: the first token ([CLS]), or the mean of the
        real tokens (`pooling="mean"`, how sentence-embedding encoders were trained)."""
        if self.config.pooling == "cls":
            return hidden[:, 0]  # [B, D]
        weights = mask.unsqueeze(-1).to(hidden.dtype)  # [B, L, 1]
        return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)  # [B, D]

    def _needs_importance(self) -> bool:
        return self.config.router in ("dasg", "random", "da_moe")

    def encode(self, input_ids: Tensor, attention_mask: Tensor | None = None,
               token_type_ids: Tensor | None = None, *, trace: bool = False,
               overrides: RoutingOverrides | None = None, sample_tiers: bool = False):
        """Run the encoder. Returns hidden states [B, L, D], the per-layer attention and MoE
        outputs, and the bool masks (real tokens, special tokens)."""
        cfg = self.config
        overrides = overrides or RoutingOverrides()
        theta_s, theta_d = overrides.thresholds(cfg)
        empty = torch.empty(0, device=input_ids.device)
        routing = MoEInput(empty, empty, empty, theta_s, theta_d, sample_tiers,
                           overrides.force_tier)
        mask = (attention_mask if attention_mask is not None
                else torch.ones_like(input_ids)).bool()  # [B, L]
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        special = torch.isin(input_ids, torch.tensor(cfg.special_token_ids,
                                                     device=input_ids.device)) & mask
        x = self.embeddings(input_ids, token_type_ids)
        need_stats = trace or self._needs_importance()
        layers = []
        for block in self.blocks:
            x, attn, moe = block(x, mask, special, need_stats, trace, routing)
            layers.append((attn, moe))
        return self.final_norm(x), layers, mask, special

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None, labels: Tensor | None = None, *,
                trace: bool = False, overrides: RoutingOverrides | None = None,
                sample_tiers: bool = False) -> ModelOutput:
        """Classify. input_ids etc.: [B, L]; labels: [B]. `overrides` changes the routing
        thresholds for this call only; `sample_tiers` draws in-band tier decisions from the
        policy (REINFORCE training)."""
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        hidden, layers, mask, special = self.encode(
            input_ids, attention_mask, token_type_ids, trace=trace, overrides=overrides,
            sample_tiers=sample_tiers)
        pooled = torch.tanh(self.pooler(self._summary(hidden, mask)))  # [B, D]
        logits = self.classifier(self.dropout(pooled)).float()  # [B, num_labels]
        aux = self._aux_losses(layers)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits, labels) + self._weighted_aux(aux)
        stats = self._per_example_stats(layers, mask)
        routing_trace = self._build_trace(layers, input_ids, token_type_ids, mask, special,
                                          overrides) if trace else None
        return ModelOutput(logits, loss, aux, routing_trace, **stats)

    def mlm_loss(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor,
                 mlm_labels: Tensor, overrides: RoutingOverrides | None = None) -> Tensor:
        """Masked-language-model loss (labels -100 where not masked) + weighted aux losses."""
        hidden, layers, _, _ = self.encode(input_ids, attention_mask, token_type_ids,
                                           overrides=overrides)
        h = self.mlm_norm(F.gelu(self.mlm_transform(hidden)))  # [B, L, D]
        logits = h @ self.embeddings.word.weight.T + self.mlm_bias  # [B, L, V]
        loss = F.cross_entropy(logits.float().flatten(0, 1), mlm_labels.flatten(),
                               ignore_index=-100)
        return loss + self._weighted_aux(self._aux_losses(layers))

    # helpers --------------------------------------------------------------------------------
    def _aux_losses(self, layers: list[tuple[AttentionOutput, MoEOutput]]) -> dict[str, Tensor]:
        totals: dict[str, Tensor] = {}
        for _, moe in layers:
            for name, value in moe.aux.items():
                totals[name] = totals.get(name, 0.0) + value
        n_moe = max(sum(1 for _, moe in layers if moe.aux), 1)
        return {name: value / n_moe for name, value in totals.items()}

    def _weighted_aux(self, aux: dict[str, Tensor]) -> Tensor | float:
        cfg = self.config
        return (cfg.aux_loss_coef * aux.get("balance", 0.0)
                + cfg.compute_loss_coef * aux.get("compute", 0.0))

    def _per_example_stats(self, layers, mask: Tensor) -> dict[str, Tensor]:
        """Per-example sums over layers, for evaluation and the REINFORCE reward.

        Every layer routes the same T real tokens, so the layers are summed per token first
        and the tokens per example in one `index_add_` (a handful of operators, not a few per
        layer and statistic: this runs on every forward)."""
        B = mask.shape[0]
        example = torch.arange(B, device=mask.device).unsqueeze(1).expand_as(mask)[mask]  # [T]
        T = example.shape[0]
        zero = torch.zeros(T, device=mask.device)
        flops, deep, slots, log_prob = zero, zero, zero, zero
        n_moe = 0  # MoE layers that routed the tokens
        for layer, (_, moe) in enumerate(layers):
            flops = flops + moe.flops.float()
            if moe.tier.numel() and self.config.is_moe_layer(layer):
                n_moe += 1
                slots = slots + (moe.expert_idx >= 0).sum((1, 2))
                if self.config.has_tiers:
                    deep = deep + (moe.tier == 1)
                    log_prob = log_prob + moe.policy_log_prob.float()
        decisions = n_moe if self.config.has_tiers else 0
        per_token = torch.stack([flops, deep, zero + decisions, slots, zero + n_moe, log_prob],
                                dim=-1)  # [T, 6]
        per_example = torch.zeros(B, 6, device=mask.device).index_add_(0, example, per_token)
        names = ("flops", "deep_decisions", "tier_decisions", "expert_slots", "moe_tokens",
                 "policy_log_prob")
        return dict(zip(names, per_example.unbind(-1), strict=True))  # each [B]

    def _build_trace(self, layers, input_ids: Tensor, token_type_ids: Tensor, mask: Tensor,
                     special: Tensor, overrides: RoutingOverrides | None) -> RoutingTrace:
        """Scatter each layer's [T, ...] routing tensors back to [B, L, ...] on the CPU."""
        theta_s, theta_d = (overrides or RoutingOverrides()).thresholds(self.config)
        mask_cpu = mask.cpu()
        all_real = bool(mask_cpu.all())  # e.g. one sentence: no padding to fill

        def spread(values: Tensor, fill: float) -> Tensor:
            values = values.detach().cpu()
            values = values.float() if values.is_floating_point() else values
            shape = (*mask_cpu.shape, *values.shape[1:])
            if all_real:  # tokens are already in [B, L] order; a copy, never a view
                return values.reshape(shape).clone()
            out = torch.full(shape, fill, dtype=values.dtype)
            out[mask_cpu] = values
            return out

        records, maps = [], []
        for layer, (attn, moe) in enumerate(layers):
            importance = normalise_importance(attn.received.float(), mask, special)
            records.append(RoutingRecord(
                layer=layer, moe=self.config.is_moe_layer(layer), token_mask=mask_cpu,
                importance=importance.detach().cpu().masked_fill(~mask_cpu, float("nan")),
                complexity=spread(moe.complexity, float("nan")),
                score=spread(moe.score, float("nan")), p_deep=spread(moe.p_deep, float("nan")),
                in_band=spread(moe.in_band, False), tier=spread(moe.tier, -1),
                expert_idx=spread(moe.expert_idx, -1), gate_weights=spread(moe.gate, 0.0),
                router_probs=spread(moe.router_probs, 0.0), flops=spread(moe.flops, 0.0),
                theta_s=theta_s, theta_d=theta_d))
            block = self.blocks[layer]
            maps.append(AttentionMaps(
                layer=layer, local=attn.local_probs.detach().float().cpu(),
                summary=None if attn.summary_probs is None
                else attn.summary_probs.detach().float().cpu(),
                group_len=attn.group_len, n_groups=attn.n_groups, window=block.attn.window))
        return RoutingTrace(self.config.router, tuple(records), tuple(maps),
                            input_ids.cpu(), token_type_ids.cpu(), special.cpu(),
                            self.expert_labels(), self.flops_reference())

    def expert_labels(self) -> tuple[str, ...]:
        cfg = self.config
        if cfg.router == "dense":
            return ("FFN",)
        if cfg.has_tiers:
            return tuple(f"S{e}" for e in range(cfg.n_shallow)) + tuple(
                f"D{e}" for e in range(cfg.n_deep))
        return tuple(f"E{e}" for e in range(cfg.n_shallow))

    def flops_reference(self) -> dict[str, float]:
        """FLOPs per token per MoE layer of reference choices, for the compute plots:
        top-k shallow experts, top-k deep experts (both plus the shared expert, if any), and
        a dense FFN as wide as all shallow experts together (the FFN the experts were split
        from in a transfer) or, with a shared expert, as wide as the shared expert."""
        cfg = self.config
        D, F_, Fd = cfg.d_model, cfg.d_ff, cfg.d_ff_deep
        shallow = 4 * D * F_
        deep = 2 * (2 * D * F_ + 2 * F_ * Fd)
        shared = 4 * D * (cfg.d_ff_shared or F_) if cfg.shared_expert else 0
        dense = shared or cfg.n_shallow * shallow
        return {"all_shallow": float(cfg.top_k * shallow + shared),
                "all_deep": float(cfg.top_k * deep + shared), "dense": float(dense)}

    def deep_experts(self) -> list[nn.Module]:
        return [b.ffn.deep for b in self.blocks if isinstance(b.ffn, DASGMoE)]
