"""The training resource: device, precision and gradient checkpointing, and the fine-tune run out of process.

The fine-tune never runs inside the Dagster process: ``run_training`` starts
``python -m opengrok_dagster.training_entry`` with Dagster Pipes, which streams the Trainer's losses
back as run logs and returns the outcome (or a bad-input error) as a Pipes message. A crash or kill of the
subprocess leaves the Trainer checkpoints in ``$OPENGROK_HOME/checkpoints/.work-<mode>/``; the next
materialisation resumes from them.

On a cluster GPU the same entry point runs in a pod with ``dagster_k8s.PipesK8sClient`` (the extras and
messages are identical; ``OPENGROK_HOME`` must then be a volume both the pod and the asset see)::

    PipesK8sClient().run(
        context=context,
        image="<image with this repository installed>",
        command=["python", "-m", TRAINING_ENTRY_MODULE],
        extras=request.model_dump(mode="json"),  # a training.job.TrainingRequest
        base_pod_spec={"containers": [{"resources": {"limits": {"nvidia.com/gpu": "1"}}}]},
    )

For several GPUs on one machine set ``processes`` (one per GPU): the command becomes
``python -m torch.distributed.run --standalone --nproc_per_node <processes> -m <entry module>`` (``accelerate
launch --num_processes <n> -m <entry module>`` works the same): the Trainer runs data-parallel (NCCL on GPUs,
gloo on CPUs), rank 0 alone reports through Pipes and publishes. Tested with two gloo processes on a CPU.
"""

import os
import signal
import subprocess
import sys

from dagster import (
    ConfigurableResource,
    Failure,
    PipesClientCompletedInvocation,
    PipesTempFileContextInjector,
    PipesTempFileMessageReader,
    open_pipes_session,
)
from pydantic import Field

from opengrok_dagster.training.device import DeviceUnavailableError, resolve_placement
from opengrok_dagster.training.job import TrainingRequest


TRAINING_ENTRY_MODULE = "opengrok_dagster.training_entry"
# Seconds an interrupted fine-tune gets to exit after SIGINT (as PipesSubprocessClient allows) before it is killed.
TERMINATION_TIMEOUT_S = 20


class TrainingProcessError(RuntimeError):
    """The training subprocess exited non-zero (a crash or a kill): it reported no outcome."""


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
        default=False,
        description="Recompute activations in the backward pass: less memory, ~30% more time (for Phi-3 on small GPUs).",
    )
    processes: int = Field(
        default=1,
        ge=1,
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

    def run_training(self, context, request: TrainingRequest) -> PipesClientCompletedInvocation:
        """Run the fine-tune ``request`` asks for in a subprocess with Pipes, on this resource's device.

        The subprocess is started here rather than by ``PipesSubprocessClient`` so that its death surfaces as
        ``TrainingProcessError`` (the client's own error class is not public API); an interrupted run still
        forwards SIGINT, as that client does, so the Trainer can stop cleanly.
        """
        request = request.model_copy(
            update={
                "device": self.device,
                "precision": self.precision,
                "gradient_checkpointing": self.gradient_checkpointing,
            }
        )
        with open_pipes_session(
            context=context,
            context_injector=PipesTempFileContextInjector(),
            message_reader=PipesTempFileMessageReader(),
            extras=request.model_dump(mode="json"),
        ) as session:
            quiet = {"TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
            env = {**os.environ, **quiet, **session.get_bootstrap_env_vars()}
            process = subprocess.Popen(self.command(), env=env)
            try:
                returncode = process.wait()
            except BaseException:  # the run was cancelled or interrupted: let the Trainer stop, then re-raise
                process.send_signal(signal.SIGINT)
                try:
                    process.wait(timeout=TERMINATION_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    process.kill()
                raise
            if returncode != 0:
                raise TrainingProcessError(f"the training subprocess exited with code {returncode}")
        return PipesClientCompletedInvocation(session)
