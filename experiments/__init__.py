"""Studies run from the repository (not installed; the product never imports them): the distillation efficacy
experiment (``python -m experiments.distillation_efficacy``) and the tokenizer alignment study behind the KD arm
(``python -m experiments.kd_alignment``). ``make bench`` runs them as sections beside the performance benches."""
