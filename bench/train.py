"""The training loop: plain PyTorch, the same for every method.

A method decides which parameters require grad (and may pick its optimizer); this loop only steps.
A loss that is NaN or infinite stops training at once and is reported as a divergence.

Causal LMs compute logits only where the loss reads them: the positions whose next token is a target
(`target_positions`, passed as a boolean `logits_to_keep`), so the LM head (for SmolLM2-135M a 49152 × 576
matmul, about a fifth of the forward FLOPs per position) runs on one position per SST-2 example instead
of every position. The loss is then the method's `target_loss` of those logits: by default the mean token
cross-entropy, as transformers' ForCausalLMLoss computes it from all logits. Encoders (a class per
sequence) keep their head's own loss; encoder-decoder models (bench/seq2seq.py) the method's `target_loss` at
the decoder's label positions.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm


@dataclass
class TrainResult:
    steps_done: int = 0
    losses: list[float] = field(default_factory=list)
    diverged_at_step: int | None = None
    train_s: float = 0.0
    tokens: int = 0  # non-padding input tokens seen (encoder-decoder models: the encoder's and the decoder's)
    head_positions: int = 0  # positions at which the LM head ran (causal LMs; 0 for encoders)
    encoder_tokens: int = 0  # of `tokens`, those an encoder-decoder's encoder read (0 for other models)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.train_s if self.train_s > 0 else 0.0


def lr_factor(schedule: str, warmup_steps: int, total_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "linear":
            return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
        return 1.0

    return factor


def target_positions(labels, extra_positions: int = 0):
    """(keep, targets) for token labels (batch × length, -100 where no loss): `keep`, a boolean mask over the
    logits' positions (batch × (extra_positions + length): virtual tokens first) of the positions whose next
    token is a target, and `targets`, those next tokens in the order a boolean `logits_to_keep` returns
    logits (row-major)."""
    import torch.nn.functional as F

    following = F.pad(labels, (extra_positions, 1), value=-100)[:, 1:]
    keep = following != -100
    return keep, following[keep]


def step_loss(model, method, hp: dict, batch: dict):
    """(loss, positions at which the LM head ran) of one training batch."""
    labels = batch["labels"]
    if labels.dim() == 1:  # a class per sequence (encoders): the classification head's own loss
        return model(**batch).loss, 0
    if "decoder_attention_mask" in batch:  # encoder-decoder: the target is the decoder's whole input
        from bench.seq2seq import step_loss as seq2seq_step_loss

        return seq2seq_step_loss(model, method, batch)
    keep, targets = target_positions(labels, method.extra_positions(hp))
    logits = model(**{k: v for k, v in batch.items() if k != "labels"}, logits_to_keep=keep).logits
    return method.target_loss(logits, targets), logits.shape[0]


def train(model, method, hp: dict, batches, progress: str = "train") -> TrainResult:
    result = TrainResult()
    if hp["steps"] <= 0:
        return result
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = method.make_optimizer(params, hp)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_factor(hp["schedule"], hp["warmup_steps"], hp["steps"]))
    device = next(model.parameters()).device
    model.train()
    start = time.perf_counter()
    bar = tqdm(range(hp["steps"]), desc=progress, leave=False, mininterval=2)
    for step in bar:
        batch = {key: value.to(device) for key, value in next(batches).items()}
        loss, head_positions = step_loss(model, method, hp, batch)
        if not math.isfinite(loss.item()):
            result.diverged_at_step = step
            break
        loss.backward()
        if hp["grad_clip"] > 0:
            torch.nn.utils.clip_grad_norm_(params, hp["grad_clip"])
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        result.losses.append(round(loss.item(), 5))
        result.tokens += sum(int(batch[key].sum()) for key in ("attention_mask", "decoder_attention_mask") if key in batch)
        result.head_positions += head_positions
        result.encoder_tokens += int(batch["attention_mask"].sum()) if "decoder_attention_mask" in batch else 0
        result.steps_done = step + 1
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    result.train_s = time.perf_counter() - start
    model.eval()
    return result
