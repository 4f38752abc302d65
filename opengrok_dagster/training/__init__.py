"""Masked-attention LoRA fine-tune of the student (report 3.2, 3.3.2): attention, data, trainer, Pipes entry point."""

# The provenance file of a published adapter directory (mask mode, base model, data versions, example ids).
CHECKPOINT_RECORD = "opengrok_checkpoint.json"
