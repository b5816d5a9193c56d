"""The training loop: plain PyTorch, the same for every method.

A method decides which parameters require grad (and may pick its optimizer); this loop only steps.
A loss that is NaN or infinite stops training at once and is reported as a divergence.

Each model kind computes its own step loss (bench/harness/kinds/). Causal LMs compute logits only where the loss
reads them: the positions whose next token is a target (`target_positions`, passed as a boolean `logits_to_keep`), so
the LM head (for SmolLM2-135M a 49152 × 576 matmul, about a fifth of the forward FLOPs per position) runs on one
position per SST-2 example instead of every position. The loss is then the method's `target_loss` of those logits: by
default the mean token cross-entropy, as transformers' ForCausalLMLoss computes it from all logits. Encoders (a class
per sequence) keep their head's own loss; encoder-decoder models (bench/harness/kinds/seq2seq.py) the method's
`target_loss` at the decoder's label positions.

hp `precision: bf16` runs each step's forward (and the loss) under `torch.autocast` in bfloat16: matmuls in bf16,
weights, gradients and optimizer states in fp32 (mixed precision, as on TPUs and modern GPUs); on a CPU with
AVX512-BF16 it speeds up training steps and classification scoring (docs/measured.md; benchmark item 10).
bench/harness/cell.py: evaluate_set scores classification under the same autocast; generation stays fp32, where
decoding one token at a time gains nothing.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from bench.harness.kinds import get_kind


@dataclass
class TrainResult:
    steps_done: int = 0
    losses: list[float] = field(default_factory=list)
    diverged_at_step: int | None = None
    train_s: float = 0.0
    tokens: int = 0  # non-padding input tokens seen (encoder-decoder models: the encoder's and the decoder's)
    head_positions: int = 0  # positions at which the LM head ran (causal LMs; 0 for encoders)
    encoder_tokens: int = 0  # of `tokens`, those an encoder-decoder's encoder read (0 for other models)
    curve_eval_s: float = 0.0  # seconds in the periodic evaluations (`on_eval`), not part of train_s

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.train_s if self.train_s > 0 else 0.0


def autocast(hp: dict, device, enabled: bool = True):
    """The context a forward pass runs in: bf16 autocast on `device` where hp precision is bf16, else nothing."""
    if enabled and hp["precision"] == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def lr_factor(schedule: str, warmup_steps: int, total_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "linear":
            return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
        return 1.0

    return factor


def step_loss(model, method, hp: dict, batch: dict, kind: str):
    """(loss, positions at which the LM head ran) of one training batch of a model of `kind`."""
    batch = dict(batch)
    index = batch.pop("example_index", None)  # where the batch came from (training_batches with_index)
    return get_kind(kind).step_loss(model, method, hp, batch, index)


def train(model, method, hp: dict, batches, kind: str, progress: str = "train", on_eval=None) -> TrainResult:
    """`on_eval(model, steps_done, train_s)`, where given and hp eval_every = K > 0, is called before the first step,
    after every K steps and after the last; its time is kept in `curve_eval_s`, outside `train_s`."""
    result = TrainResult()
    if hp["steps"] <= 0:
        return result
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = method.make_optimizer(params, hp)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(hp["schedule"], hp["warmup_steps"], hp["steps"]))
    device = next(model.parameters()).device
    model.train()
    start = time.perf_counter()

    def periodic_eval(done: int) -> None:
        every = hp.get("eval_every", 0)
        if on_eval is None or every <= 0 or (done % every and done != hp["steps"]):
            return
        began = time.perf_counter()
        on_eval(model, done, began - start - result.curve_eval_s)
        model.train()
        result.curve_eval_s += time.perf_counter() - began

    periodic_eval(0)
    bar = tqdm(range(hp["steps"]), desc=progress, leave=False, mininterval=2)
    for step in bar:
        batch = {key: value.to(device) for key, value in next(batches).items()}
        with autocast(hp, device):
            loss, head_positions = step_loss(model, method, hp, batch, kind)
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
        tokens, encoder_tokens = get_kind(kind).batch_tokens(batch)
        result.tokens += tokens
        result.head_positions += head_positions
        result.encoder_tokens += encoder_tokens
        result.steps_done = step + 1
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        periodic_eval(result.steps_done)
    result.train_s = time.perf_counter() - start - result.curve_eval_s
    model.eval()
    return result
