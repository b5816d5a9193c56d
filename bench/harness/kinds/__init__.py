"""The model kinds, one module each (causal_lm, encoder, seq2seq), registered by name behind bench/api/kinds.py's
interface. `get_kind(name)` is how the harness reaches one; `register_kind` adds another."""

from __future__ import annotations

from bench.api.errors import BenchError
from bench.api.kinds import ModelKind
from bench.harness.kinds.causal_lm import CausalLM
from bench.harness.kinds.encoder import Encoder
from bench.harness.kinds.seq2seq import Seq2Seq

KINDS: dict[str, ModelKind] = {}


def register_kind(kind: ModelKind) -> ModelKind:
    KINDS[kind.name] = kind
    return kind


def get_kind(name: str) -> ModelKind:
    try:
        return KINDS[name]
    except KeyError:
        raise BenchError(f"unknown model kind {name!r}: use one of {', '.join(KINDS)}") from None


for builtin in (CausalLM(), Encoder(), Seq2Seq()):
    register_kind(builtin)
