"""Model configuration: one frozen dataclass that round-trips through JSON (DESIGN.md §2, §4).

Every hyperparameter of a checkpoint lives here, so that `config.json` alone says how to
rebuild the module before any weight is read. The class is frozen on purpose: routing
thresholds are changed per call with `RoutingOverrides` (see `routers.py`) or with
`dataclasses.replace`, never by mutating a model that several app sessions share.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

RouterKind = Literal["dasg", "switch", "topk", "da_moe", "mh_moe", "random", "dense"]
AttentionKind = Literal["gmha", "mha"]
NormPosition = Literal["pre", "post"]
Pooling = Literal["cls", "mean"]

FORMAT_VERSION = 1


@dataclass(frozen=True, kw_only=True)
class DasgConfig:
    """Hyperparameters of a DASG-MoE encoder and of its routing.

    Defaults describe the small from-scratch model; `transfer.py` fills in the sizes of a
    pretrained BERT-style encoder for the flagships.
    """

    # model
    vocab_size: int = 8192
    max_len: int = 128
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    type_vocab_size: int = 2
    pad_token_id: int = 0
    special_token_ids: tuple[int, ...] = (2, 3)  # [CLS], [SEP]: left out of importance
    dropout: float = 0.1
    layer_norm_eps: float = 1e-12
    norm_position: NormPosition = "pre"  # "post" reproduces BERT blocks for weight transfer
    pooling: Pooling = "cls"  # classification head reads [CLS], or the mean of real tokens
    # attention (GMHA, DESIGN.md §2.1)
    attention: AttentionKind = "gmha"
    n_groups: int = 16  # G for a full-length input; group length is ceil(max_len / G)
    window: int = 16  # sliding window inside a group: token i sees j when |i - j| <= window // 2
    aggregate_groups: bool = True  # long-range path: group summaries attend to each other
    refine_groups: bool = True  # one small MLP per group index refines that group's output
    group_mlp_dim: int = 32  # hidden width of those refinement MLPs
    # experts and routing (DSSE §2.2, ADR §2.3, other routers §2.5)
    router: RouterKind = "dasg"
    moe_every: int = 1  # MoE in every `moe_every`-th layer (Switch uses 2), dense FFN elsewhere
    n_shallow: int = 4  # experts of the shallow tier (the only tier for one-tier routers)
    n_deep: int = 4
    d_ff: int = 256  # hidden width of a shallow expert (and of the dense FFN)
    d_ff_deep: int = 64  # width of the deep experts' trainable middle layer
    d_ff_dense: int | None = None  # width of dense FFN layers (None: d_ff)
    top_k: int = 2
    theta_s: float = 0.3  # score below: shallow tier
    theta_d: float = 0.7  # score above: deep tier
    k_max: int = 4  # DA-MoE: most experts a token may get
    mh_heads: int = 2  # MH-MoE: sub-tokens per token
    shared_expert: bool = False  # an always-on expert beside the routed ones (DeepSeekMoE)
    d_ff_shared: int | None = None  # hidden width of that shared expert (None: d_ff)
    task_urgency: bool = True  # learned per-task shift of the routing score
    deep_init_from: tuple[int, ...] = ()  # shallow expert each deep expert was copied from
    aux_loss_coef: float = 0.01  # Switch load balancing, per tier
    compute_loss_coef: float = 0.0  # penalty on the expected deep-tier rate
    # task
    task: str = "mrpc"
    num_labels: int = 2
    id2label: dict[int, str] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        # JSON gives lists and string keys; normalise so equality survives a round trip.
        # A hand-edited config.json may hold anything: name the field instead of letting an
        # AttributeError or a bare int() message escape.
        try:
            object.__setattr__(self, "deep_init_from",
                               tuple(int(i) for i in self.deep_init_from))
            object.__setattr__(self, "special_token_ids",
                               tuple(int(i) for i in self.special_token_ids))
        except (TypeError, ValueError):
            raise ValueError(f"config fields 'deep_init_from' and 'special_token_ids' must be "
                             f"lists of integers, got {self.deep_init_from!r} and "
                             f"{self.special_token_ids!r}") from None
        if not isinstance(self.id2label, dict):
            raise ValueError(f"config field 'id2label' must be an object mapping label ids to "
                             f"names, got {self.id2label!r}")
        try:
            id2label = {int(k): str(v) for k, v in self.id2label.items()}
        except ValueError:
            raise ValueError(f"config field 'id2label' keys must be integers, got "
                             f"{list(self.id2label)}") from None
        object.__setattr__(self, "id2label", id2label)
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first field that is out of range."""
        positive = ["vocab_size", "max_len", "d_model", "n_layers", "n_heads", "n_groups",
                    "window", "group_mlp_dim", "moe_every", "n_shallow", "n_deep", "d_ff",
                    "d_ff_deep", "top_k", "k_max", "mh_heads", "num_labels", "type_vocab_size"]
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"config field {name!r} must be a positive integer, got {value!r}")
        numbers = ["theta_s", "theta_d", "dropout", "layer_norm_eps", "aux_loss_coef",
                   "compute_loss_coef"]
        for name in numbers:
            value = getattr(self, name)
            if (not isinstance(value, int | float) or isinstance(value, bool)
                    or not math.isfinite(value)):
                raise ValueError(f"config field {name!r} must be a finite number, got {value!r}")
        choices = {"router": RouterKind, "attention": AttentionKind,
                   "norm_position": NormPosition, "pooling": Pooling}
        for name, kind in choices.items():
            if getattr(self, name) not in get_args(kind):
                raise ValueError(f"config field {name!r} is {getattr(self, name)!r}; "
                                 f"expected one of {', '.join(get_args(kind))}")
        for name in ("d_ff_dense", "d_ff_shared"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                      or value <= 0):
                raise ValueError(f"config field {name!r} must be a positive integer or null, "
                                 f"got {value!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads "
                             f"({self.n_heads})")
        if not 0.0 <= self.theta_s <= self.theta_d <= 1.0:
            raise ValueError(f"thresholds must satisfy 0 <= theta_s <= theta_d <= 1, got "
                             f"theta_s={self.theta_s}, theta_d={self.theta_d}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.top_k > self.n_shallow or (self.router in ("dasg", "random")
                                           and self.top_k > self.n_deep):
            raise ValueError(f"top_k ({self.top_k}) exceeds the experts of a tier "
                             f"(n_shallow={self.n_shallow}, n_deep={self.n_deep})")
        if self.router == "da_moe" and self.k_max > self.n_shallow:
            raise ValueError(f"k_max ({self.k_max}) exceeds n_shallow ({self.n_shallow})")
        if self.router == "mh_moe" and self.shared_expert:
            raise ValueError("shared_expert is not available with the mh_moe router")
        if self.router == "mh_moe" and self.d_model % self.mh_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by mh_heads "
                             f"({self.mh_heads})")
        if self.deep_init_from and (len(self.deep_init_from) != self.n_deep or any(
                not 0 <= i < self.n_shallow for i in self.deep_init_from)):
            raise ValueError(f"deep_init_from {list(self.deep_init_from)} must list one shallow "
                             f"expert index (< {self.n_shallow}) per deep expert ({self.n_deep})")
        if self.id2label and sorted(self.id2label) != list(range(self.num_labels)):
            raise ValueError(f"id2label keys {sorted(self.id2label)} must be 0..num_labels-1 "
                             f"({self.num_labels} labels)")
        if self.format_version > FORMAT_VERSION:
            raise ValueError(f"config format_version {self.format_version} is newer than this "
                             f"code understands ({FORMAT_VERSION}); upgrade dasg_moe")

    # derived sizes ------------------------------------------------------------------------
    @property
    def group_len(self) -> int:
        """Tokens per group, M = ceil(max_len / G); fixed so a token's group never depends on
        the padding of its batch (paper silent; see attention.group_count)."""
        return -(-self.max_len // self.n_groups)

    @property
    def has_tiers(self) -> bool:
        return self.router in ("dasg", "random")

    def is_moe_layer(self, layer: int) -> bool:
        return self.router != "dense" and layer % self.moe_every == self.moe_every - 1

    # JSON ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["deep_init_from"] = list(self.deep_init_from)
        d["special_token_ids"] = list(self.special_token_ids)
        d["id2label"] = {str(k): v for k, v in self.id2label.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DasgConfig:
        """Build from a dict, rejecting unknown keys by name (HF-style extras are ignored)."""
        known = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k not in ("model_type", "architectures",
                                                       "torch_dtype")}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown config key(s): {', '.join(unknown)}")
        return cls(**d)

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps({"model_type": "dasg_moe", "architectures": ["DasgMoEModel"],
                           **self.to_dict()}, indent=2, sort_keys=False)
        if path is not None:
            Path(path).write_text(text + "\n", encoding="utf-8")
        return text

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> DasgConfig:
        text = str(text_or_path)
        if isinstance(text_or_path, Path) or not text.lstrip().startswith("{"):
            text = Path(text_or_path).read_text(encoding="utf-8")
        try:
            d = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"config is not valid JSON: {err}") from None
        if not isinstance(d, dict):
            raise ValueError("config JSON must be an object")
        return cls.from_dict(d)
