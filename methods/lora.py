"""LoRA (Hu et al. 2021): trainable low-rank updates B·A beside frozen weight matrices, via peft.

Defaults follow the paper's GPT-2 setting: rank 4 on the query and value projections, lr 2e-4.
`target_modules=auto` takes each architecture's query/value projections from config/models.yaml
(`query_value`: q_proj,v_proj for Llama; query,value for BERT; q,v for MPNet; GPT-2's fused q/k/v `c_attn`,
as peft does, where Hu et al. adapt only its q and v parts); a comma list names modules explicitly, from the
architecture's `linear` names. Encoders also train their head.
"""

from bench.api.errors import BenchError
from bench.harness.method import PeftMethod
from methods._common import model_architecture, peft_task_type


class LoRA(PeftMethod):
    description = __doc__
    defaults = {"lr": 2e-4, "r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "auto"}

    def check_hparams(self, hp, task=None, model_kind=None):
        if hp["r"] <= 0:
            raise BenchError(f"lora r={hp['r']} must be a positive integer (rank; default {self.defaults['r']})")

    def check_architecture(self, hp, arch):
        absent = [t for t in self.targets(hp, arch) if t not in arch.linear]
        if absent:
            raise BenchError(
                f"lora target_modules {absent} not in {arch.model_type} models: choose from {', '.join(arch.linear)}"
            )

    @staticmethod
    def targets(hp, arch) -> list[str]:
        return list(arch.query_value) if hp["target_modules"] == "auto" else hp["target_modules"].split(",")

    def apply(self, model, hp, ctx):
        from peft import LoraConfig, get_peft_model

        arch = model_architecture(model)
        self.check_hparams(hp)
        self.check_architecture(hp, arch)
        config = LoraConfig(
            r=hp["r"],
            lora_alpha=hp["alpha"],
            lora_dropout=hp["dropout"],
            target_modules=self.targets(hp, arch),
            task_type=peft_task_type(ctx),
        )
        return get_peft_model(model, config)


METHOD = LoRA()
