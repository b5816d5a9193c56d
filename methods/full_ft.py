"""Full fine-tuning: every weight of the model trains (the "model tuning" baseline)."""

from bench.harness.method import Method


class FullFineTuning(Method):
    description = __doc__
    defaults = {"lr": 2e-5}
    tunes_base = True

    def apply(self, model, hp, ctx):
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        return model


METHOD = FullFineTuning()
