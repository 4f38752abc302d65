"""Masked-attention LoRA fine-tune of the student (report 3.2, 3.3.2): attention, data, trainer, Pipes entry point."""
