"""Learning curves: a fixed eval subset scored every `eval_every` training steps (hp), for the claim that prompt
tuning needs more training time than fine-tuning (Lester et al. 2021).

The subset is the cell's `dev` split where it has one (held out of the training split), else the first
`curve_limit` examples of the in-domain eval set (itself a fixed seeded subset, nested across limits: with
curve_limit >= eval_limit the curve's set is the eval set, and its last point is the record's in-domain score).
Neither overlaps the training examples. The training loop calls `LearningCurve` before the first step, every K
steps and after the last; its time is `cost.curve_eval_s`, outside `train_s`.
"""

from __future__ import annotations

from bench.api.errors import BenchError


def check(hp: dict) -> None:
    """Plan-time refusal of curve settings that cannot work."""
    if hp["eval_every"] < 0 or hp["curve_limit"] <= 0:
        raise BenchError(
            f"eval_every={hp['eval_every']}, curve_limit={hp['curve_limit']}: use eval_every >= 0 "
            "(0 = no curve) and curve_limit >= 1"
        )
    if hp["eval_every"] > 0 and hp["steps"] <= 0:
        raise BenchError("eval_every needs a cell that trains (steps > 0): drop eval_every or set steps")


def curve_examples(eval_sets: dict[str, list], task_name: str, limit: int) -> tuple[str, list]:
    """(eval set name, examples) the curve scores: `dev` where the cell has it, else the in-domain set's first
    `limit` examples."""
    name = "dev" if "dev" in eval_sets else task_name
    return name, list(eval_sets[name][:limit])


class LearningCurve:
    """The loop's `on_eval`: scores the subset with `score(model, examples) -> (metrics, rows)` (the cell's own
    evaluation) and keeps one point per call: step, training seconds so far, the primary metric and, for
    classification, which examples were right (a string of 0/1 in the subset's order, for paired intervals)."""

    def __init__(self, score, eval_set: str, examples: list, metric: str):
        self.score, self.eval_set, self.examples, self.metric = score, eval_set, examples, metric
        self.points: list[dict] = []

    def __call__(self, model, step: int, train_s: float) -> None:
        model.eval()
        metrics, rows = self.score(model, self.examples)
        point = {"step": step, "train_s": round(train_s, 3), "score": metrics[self.metric]}
        if rows and "pred" in rows[0]:
            point["correct"] = "".join(str(int(r["pred"] == r["gold"])) for r in rows)
        self.points.append(point)

    def record(self, seconds: float) -> dict:
        from bench.harness.evaluation import example_ids

        return {
            "eval_set": self.eval_set,
            "metric": self.metric,
            "n": len(self.examples),
            "ids": example_ids(self.examples),
            "eval_s": round(seconds, 3),
            "points": self.points,
        }
