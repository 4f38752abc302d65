"""The training resource: device, precision and gradient checkpointing, and the fine-tune run out of process.

The fine-tune never runs inside the Dagster process: ``run_training`` starts
``python -m opengrok_dagster.training.pipes_entry`` with Dagster Pipes, which streams the Trainer's losses
back as run logs and returns the outcome (or a bad-input error) as a Pipes message. A crash or kill of the
subprocess leaves the Trainer checkpoints in ``$OPENGROK_HOME/checkpoints/.work-<mode>/``; the next
materialisation resumes from them.

On a cluster GPU the same entry point runs in a pod with ``dagster_k8s.PipesK8sClient`` (the extras and
messages are identical; ``OPENGROK_HOME`` must then be a volume both the pod and the asset see)::

    PipesK8sClient().run(
        context=context,
        image="<image with this repository installed>",
        command=["python", "-m", TRAINING_ENTRY_MODULE],
        extras=extras,  # as the lora_checkpoint asset builds them
        base_pod_spec={"containers": [{"resources": {"limits": {"nvidia.com/gpu": "1"}}}]},
    )

For several GPUs on one machine set ``processes`` (one per GPU): the command becomes
``python -m torch.distributed.run --standalone --nproc_per_node <processes> -m <entry module>`` (``accelerate
launch --num_processes <n> -m <entry module>`` works the same): the Trainer runs data-parallel (NCCL on GPUs,
gloo on CPUs), rank 0 alone reports through Pipes and publishes. Tested with two gloo processes on a CPU.
"""

import sys

from dagster import ConfigurableResource, Failure, PipesClientCompletedInvocation, PipesSubprocessClient
from pydantic import Field

from opengrok_dagster.training.device import DeviceUnavailableError, resolve_placement

TRAINING_ENTRY_MODULE = "opengrok_dagster.training.pipes_entry"


class TrainingResource(ConfigurableResource):
    """Where the student is fine-tuned: device, numeric precision, memory trade-offs."""

    device: str = Field(
        default="auto",
        description="'auto' (cuda, then mps, then cpu), 'cuda', 'mps' or 'cpu'; a device that is not there is an error.",
    )
    precision: str = Field(
        default="auto",
        description="'auto' (bf16 on GPUs that have it, else fp16 on CUDA, fp32 on mps/cpu), 'bf16', 'fp16' or 'fp32'.",
    )
    gradient_checkpointing: bool = Field(
        default=False, description="Recompute activations in the backward pass: less memory, ~30% more time (for Phi-3 on small GPUs)."
    )
    processes: int = Field(
        default=1, ge=1,
        description=(
            "Data-parallel training processes on this machine (one per GPU); above 1 the fine-tune runs under "
            "torchrun."
        ),
    )

    def command(self) -> list[str]:
        """The entry point, under torchrun when training data-parallel."""
        if self.processes == 1:
            return [sys.executable, "-m", TRAINING_ENTRY_MODULE]
        launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={self.processes}"]
        return [sys.executable, *launcher, "-m", TRAINING_ENTRY_MODULE]

    def check_placement(self) -> str:
        """Fail before starting a subprocess when the device is not on this machine (the subprocess runs here)."""
        try:
            return resolve_placement(self.device, self.precision).description
        except DeviceUnavailableError as exc:
            raise Failure(description=str(exc)) from None

    def run_training(self, context, extras: dict) -> PipesClientCompletedInvocation:
        """Run the fine-tune in a subprocess with Pipes; ``extras`` as documented in the entry module."""
        client = PipesSubprocessClient(env={"TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"})
        return client.run(
            context=context,
            command=self.command(),
            extras={
                **extras,
                "device": self.device,
                "precision": self.precision,
                "gradient_checkpointing": self.gradient_checkpointing,
            },
        )
