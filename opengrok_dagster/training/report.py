"""What a checkpoint says about itself: loss curves, their plot and the model card."""

from __future__ import annotations

from pathlib import Path


def loss_curves(log_history: list[dict]) -> dict[str, list[list[float]]]:
    """``{"train": [[step, loss], ...], "validation": [[step, eval_loss], ...]}`` from the Trainer's log history."""
    return {
        "train": [[entry["step"], entry["loss"]] for entry in log_history if "loss" in entry],
        "validation": [[entry["step"], entry["eval_loss"]] for entry in log_history if "eval_loss" in entry],
    }


def write_loss_plot(curves: dict, path: Path, *, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 3.5), dpi=100)
    for name, marker in (("train", None), ("validation", "o")):
        if curves[name]:
            steps, losses = zip(*curves[name])
            axes.plot(steps, losses, label=name, marker=marker)
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("cross-entropy (response tokens)")
    axes.set_title(title)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def write_model_card(path: Path, outcome, config, data_versions: dict) -> None:
    """A model card README replacing peft's template: how it was trained and how to load it."""
    hyper = "\n".join(f"| {name} | {value} |" for name, value in config.model_dump().items())
    versions = "\n".join(f"- `{name}`: {version}" for name, version in sorted(data_versions.items())) or "- (not recorded)"
    path.write_text(f"""---
library_name: peft
base_model: {outcome.base_model}
tags: [opengrok, lora, distillation]
---
# OpenGrok LoRA adapter: `{outcome.mask_mode}` attention mask

A LoRA adapter distilled from teacher responses to social-media prompts (OpenGrok report, sections 3.2 and 3.3.2).
During training the attention scores were masked in mode `{outcome.mask_mode}`; the mask is a training-time
mechanism only, so the adapter runs with stock attention:

```python
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

base = AutoModelForCausalLM.from_pretrained("{outcome.base_model}")
model = PeftModel.from_pretrained(base, "<this directory>")
tokenizer = AutoTokenizer.from_pretrained("<this directory>")
```

## Result
| metric | value |
|---|---:|
| best validation loss | {outcome.best_val_loss:.4f} (step {outcome.best_step}) |
| optimizer steps | {outcome.global_step} |
| early stopped | {outcome.early_stopped} |
| train / validation examples | {outcome.train_examples} / {outcome.validation_examples} |
| training tokens/s | {outcome.tokens_per_second:.0f} on {outcome.device} |
| LoRA targets | {", ".join(outcome.lora_targets)} |

Loss curves: `loss_curves.json`, `loss_curves.png`. Provenance and example ids: `opengrok_checkpoint.json`.

## Inputs (data versions)
{versions}

## Hyper-parameters
| name | value |
|---|---|
{hyper}
""")

