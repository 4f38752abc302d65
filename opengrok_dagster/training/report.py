"""What a checkpoint says about itself: loss curves, their plot and the model card."""

from __future__ import annotations

from pathlib import Path

from opengrok_dagster.training.card import card_metadata, write_card


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
    """A model card README replacing peft's template: hub metadata, how it was trained and how to load it."""
    metadata = card_metadata(outcome.base_model, outcome.mask_mode)
    base = metadata.base_model or "<the base model's directory>"
    origin = f"[`{base}`](https://huggingface.co/{base})" if metadata.base_model else "a local checkpoint (no hub id)"
    hyper = "\n".join(f"| {name} | {value} |" for name, value in config.model_dump().items())
    versions = (
        "\n".join(f"- `{name}`: {version}" for name, version in sorted(data_versions.items())) or "- (not recorded)"
    )
    write_card(
        path,
        metadata,
        f"""
# OpenGrok LoRA adapter: `{outcome.mask_mode}` attention mask

A LoRA adapter of {origin}, distilled from teacher responses to social-media prompts (OpenGrok report, sections
3.2 and 3.3.2). During training the attention scores were masked in mode `{outcome.mask_mode}`; the mask is a
training-time mechanism only, so the adapter runs with stock attention:

```python
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

base = AutoModelForCausalLM.from_pretrained("{base}")
model = PeftModel.from_pretrained(base, "<this directory or hub repo>")
tokenizer = AutoTokenizer.from_pretrained("<this directory or hub repo>")
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
Scores on the evaluation tasks are in the metadata's `model-index` once `eval_report` has run.

## Training data
The teacher's responses to OpenGrok's prompt grid, filtered (`filtered_responses`) and masked (`mask_tables`);
they are not a hub dataset. Data versions:
{versions}

## Hyper-parameters
| name | value |
|---|---|
{hyper}
""",
    )
