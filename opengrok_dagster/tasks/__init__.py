"""The bottom stage: what every later stage shares about the SNS tasks and the artifacts between stages (task
formats, evaluation splits and their readers, hub splits, baselines, partition keys, reason codes, artifact
contracts). It imports no other stage, so a change elsewhere never moves its code version."""
