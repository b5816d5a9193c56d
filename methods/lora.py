"""LoRA (Hu et al. 2021): trainable low-rank updates B·A beside frozen weight matrices, via peft.

Defaults follow the paper's GPT-2 setting: rank 4 on the query and value projections, lr 2e-4.
`target_modules=auto` lets peft pick each architecture's q/v names (q_proj,v_proj for Llama;
query,value for BERT); a comma list names modules explicitly. Encoders also train their head.
"""
from bench.errors import BenchError
from bench.method import PeftMethod


class LoRA(PeftMethod):
    description = __doc__
    defaults = {"lr": 2e-4, "r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "auto"}

    def apply(self, model, hp, ctx):
        from peft import LoraConfig, get_peft_model

        if hp["r"] <= 0:
            raise BenchError(f"lora r={hp['r']} must be a positive integer")
        targets = None if hp["target_modules"] == "auto" else hp["target_modules"].split(",")
        if targets:
            names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
            absent = [t for t in targets if t not in names]
            if absent:
                linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                                 if type(m).__name__ == "Linear"})
                raise BenchError(f"lora target_modules {absent} not in the model: choose from {', '.join(linear)}")
        config = LoraConfig(r=hp["r"], lora_alpha=hp["alpha"], lora_dropout=hp["dropout"],
                            target_modules=targets,
                            task_type="CAUSAL_LM" if ctx.model_kind == "causal_lm" else "SEQ_CLS")
        return get_peft_model(model, config)


METHOD = LoRA()
