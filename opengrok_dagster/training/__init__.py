"""Masked-attention LoRA fine-tune of the student (report 3.2, 3.3.2): attention, data, trainer, Pipes entry point."""

# The attention-mask modes (training.attention implements them): one LoRA checkpoint each, so the evaluation
# can compare them (the ablation); the lora_checkpoint asset is partitioned by them.
MASK_MODES = ("none", "paper", "hard", "soft")

# The provenance file of a published adapter directory (mask mode, base model, data versions, example ids).
CHECKPOINT_RECORD = "opengrok_checkpoint.json"
