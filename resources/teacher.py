"""The teacher LLM: the embedded `transformers serve` default, or any OpenAI-compatible endpoint (Grok...)."""

import atexit
from typing import Literal

from dagster import ConfigurableResource, InitResourceContext
from pydantic import Field, PrivateAttr

from opengrok_dagster.collect.budget import Budget, BudgetLimits
from opengrok_dagster.collect.client import ClientLimits, TeacherClient, TeacherEndpoint, characters_token_count
from opengrok_dagster.collect.collector import Leases
from opengrok_dagster.collect.plan import TokenCounter, tokenizer_token_counter
from opengrok_dagster.collect.result import Prices, SamplingParams
from opengrok_dagster.collect.store import ResponseKey, ResponseStore
from opengrok_dagster.collect.teacher import BatchSettings, TeacherSpec
from opengrok_dagster.offline.annotating_front import AnnotatingFront
from opengrok_dagster.offline.logprobs_server import LogprobsServer
from opengrok_dagster.offline.reference_teacher import NAME as REFERENCE_NAME
from opengrok_dagster.offline.reference_teacher import ReferenceTeacher
from opengrok_dagster.offline.server import TeacherServer
from opengrok_dagster.offline_model import MODEL_NAME, OfflineModelError, check_offline_model, offline_model_dir
from opengrok_dagster.redact import redact_url
from opengrok_dagster.tasks.datasets import resolve_data_dir


# The reference annotator's short name in the teacher's label (the response store key, spend tables).
REFERENCE_ANNOTATOR = "reference annotator (TF-IDF+LR, not an LLM)"
# Every label the embedded teacher stores its responses under (they cost $0: stand-ins, named so in the spend).
ANNOTATED_EMBEDDED_LABEL = f"{MODEL_NAME} + {REFERENCE_ANNOTATOR}"
EMBEDDED_TEACHER_LABELS = frozenset({MODEL_NAME, ANNOTATED_EMBEDDED_LABEL})

# Embedded servers kept for the life of this process, by model directory, whether they return logprobs and who
# annotates (see TeacherResource.keep_server).
_KEPT_SERVERS: dict[tuple[str, bool, str], TeacherServer | LogprobsServer | AnnotatingFront] = {}


@atexit.register
def _stop_kept_servers() -> None:
    while _KEPT_SERVERS:
        _KEPT_SERVERS.popitem()[1].stop()


class TeacherResource(ConfigurableResource):
    """Builds the teacher client; in ``embedded`` mode it also runs the offline teacher server.

    The server starts on first use (steps that never call the teacher never pay for it) and is stopped,
    by its own PID, when the step's resources are torn down.
    """

    mode: Literal["embedded", "remote"] = Field(
        default="embedded",
        description="'embedded': serve the offline SmolLM2 model with `transformers serve` on loopback; "
        "'remote': call base_url (e.g. Grok at https://api.x.ai/v1).",
    )
    annotator: Literal["reference", "teacher"] = Field(
        default="reference",
        description="Who answers the annotation prompts (a label for a real post) in embedded mode "
        "(OPENGROK_TEACHER_ANNOTATOR): 'reference', the reference teacher (TF-IDF + logistic regression fitted on "
        "the gold train splits of the data directory, not an LLM), a stand-in of known skill, while the embedded "
        "LLM answers the generative prompts; 'teacher', the embedded LLM answers everything (self-distillation: it "
        "is the student's own base checkpoint). A remote teacher answers every prompt itself.",
    )
    base_url: str | None = Field(default=None, description="OpenAI-compatible base URL ending in /v1 (remote mode).")
    model: str | None = Field(default=None, description="Model id sent to the endpoint (remote mode), e.g. 'grok-4'.")
    api_key: str | None = Field(
        default=None, description="API key for the endpoint. Set it with EnvVar('XAI_API_KEY'); never inline."
    )
    cache_dir: str | None = Field(
        default=None, description="Offline model cache (embedded mode); default ~/.cache/opengrok."
    )
    max_concurrency: int = Field(default=8, description="Requests in flight at once.")
    requests_per_minute: float | None = Field(default=None, description="Requests-per-minute limit; unset = none.")
    tokens_per_minute: float | None = Field(default=None, description="Tokens-per-minute limit; unset = none.")
    timeout_s: float = Field(default=120.0, description="Per-request timeout in seconds.")
    max_attempts: int = Field(
        default=6, description="Attempts per prompt for retryable failures (429, 5xx, timeouts)."
    )
    max_connection_failures: int = Field(
        default=ClientLimits().max_connection_failures,
        description="Connection failures in a row (refused, DNS, TLS) after which the endpoint is judged absent and "
        "the partition stops at once, its unanswered prompts left for the next run "
        "(OPENGROK_TEACHER_MAX_CONNECTION_FAILURES); timeouts, 5xx and 429 are retried as max_attempts says.",
    )
    temperature: float = Field(default=0.7, description="Sampling temperature.")
    top_p: float = Field(default=0.95, description="Nucleus sampling top_p.")
    max_tokens: int = Field(default=256, description="Maximum completion tokens per response.")
    seed: int | None = Field(default=None, description="Sampling seed sent to the endpoint, where it supports one.")
    top_logprobs: int | None = Field(
        default=None,
        description="Request logprobs with this many alternatives per token (xAI allows up to 8, OpenAI 20), stored "
        "with each response for token-level distillation; unset = none. The embedded teacher scores its answers "
        "with the same checkpoint (a front before `transformers serve`, which ignores the field); a remote "
        "endpoint that answers without them stops the collection with an error saying so.",
    )
    prompt_price_per_million: float = Field(default=0.0, description="USD per million prompt tokens (cost estimate).")
    completion_price_per_million: float = Field(
        default=0.0, description="USD per million completion tokens (cost estimate)."
    )
    budget_usd: float | None = Field(
        default=None,
        description="USD per run (OPENGROK_TEACHER_BUDGET_USD): a request is sent only if its worst case fits what "
        "is left; unset = no limit. `opengrok run` counts all its partitions as one run.",
    )
    daily_budget_usd: float | None = Field(
        default=None,
        description="USD per UTC day across every run and process sharing the response store "
        "(OPENGROK_TEACHER_DAILY_BUDGET_USD); unset = no limit.",
    )
    collection: Literal["online", "batch"] = Field(
        default="online",
        description="'online': one chat completion per prompt; 'batch': the partition's prompts through the "
        "provider's Files + Batches API (OpenAI, xAI) at the batch price, resumed, not resubmitted, after a kill "
        "(OPENGROK_TEACHER_COLLECTION).",
    )
    batch_price_factor: float = Field(
        default=BatchSettings().price_factor,
        description="Batch price over the online price (OpenAI: 0.5), applied to the configured prices.",
    )
    batch_poll_s: float = Field(
        default=BatchSettings().poll_s, description="Seconds between polls of a batch's status."
    )
    lease_s: float = Field(
        default=Leases().lease_s,
        description="Seconds a claim on a prompt lasts unrenewed: a killed run's prompts are taken over by the next "
        "run after this long (a live run renews its claims every lease_s / 3).",
    )
    server_log: str | None = Field(default=None, description="File that receives the embedded server's output.")
    keep_server: bool = Field(
        default=False,
        description="Keep the embedded server running for later runs in this process, stopped at exit (`opengrok run` "
        "executes one run per topic and stage in one process: one server start instead of one per run).",
    )

    _server: TeacherServer | LogprobsServer | AnnotatingFront | None = PrivateAttr(default=None)

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        if self._server is not None and not self.keep_server:
            self._server.stop()
        self._server = None

    def endpoint(self) -> TeacherEndpoint:
        if self.mode == "remote":
            if not self.base_url or not self.model:
                raise ValueError(
                    "teacher mode is 'remote' but base_url or model is not set: set OPENGROK_TEACHER_BASE_URL and "
                    "OPENGROK_TEACHER_MODEL (e.g. https://api.x.ai/v1 and grok-4)"
                )
            return TeacherEndpoint(self.base_url, self.model, self.api_key)
        if self._server is None:
            model_dir = check_offline_model(offline_model_dir(self.cache_dir))
            key = (str(model_dir), self.top_logprobs is not None, self.annotator)
            server = _KEPT_SERVERS.get(key) if self.keep_server else None
            if server is None:
                server = self._setup_embedded_server(model_dir)
                if self.keep_server:
                    _KEPT_SERVERS[key] = server
            self._server = server
        return TeacherEndpoint(self._server.base_url, self._server.model_id, None, label=self.teacher_label)

    def _setup_embedded_server(self, model_dir) -> TeacherServer | LogprobsServer | AnnotatingFront:
        server = TeacherServer(model_dir, log_path=self.server_log)
        if self.top_logprobs is not None:  # only then: the front loads a second copy of the model
            server = LogprobsServer(server)
        if self.annotator == "reference":
            data_dir = resolve_data_dir()
            if data_dir is None:
                raise ValueError(
                    "the embedded teacher's reference annotator needs the gold train splits: set OPENGROK_DATA_DIR "
                    "to a folder laid out like shared/data, or OPENGROK_TEACHER_ANNOTATOR=teacher"
                )
            server = AnnotatingFront(server, ReferenceTeacher.on_demand(data_dir))
        server.start()
        return server

    @property
    def teacher_label(self) -> str:
        """The teacher's name in the response store, the spend tables and the report: the remote model id, or the
        embedded model (with the reference annotator where it answers the annotation prompts)."""
        if self.mode == "remote":
            return self.model or ""
        return ANNOTATED_EMBEDDED_LABEL if self.annotator == "reference" else MODEL_NAME

    def description(self) -> str:
        """Which teacher this is, in words, for the report (no credential: the URL is redacted)."""
        if self.mode == "remote":
            return f"{self.model} at {redact_url(self.base_url)}"
        if self.annotator == "reference":
            return (
                f"embedded offline teacher: label prompts (annotations, the evaluation's questions) answered by the "
                f"{REFERENCE_NAME}; generative prompts by {MODEL_NAME}"
            )
        return f"embedded offline teacher ({MODEL_NAME})"

    @property
    def base_checkpoint(self) -> str | None:
        """The checkpoint that answers the label prompts, where it is a known one (self-distillation is told from
        it); None where a classifier answers them."""
        if self.mode == "remote":
            return self.model
        return None if self.annotator == "reference" else MODEL_NAME

    def response_key(self, round_key: str) -> ResponseKey:
        """The store key of this teacher's responses in ``round_key``; never starts the server."""
        return ResponseKey(self.teacher_label, self.sampling().key(), round_key)

    def batch_settings(self) -> BatchSettings:
        return BatchSettings(poll_s=self.batch_poll_s, price_factor=self.batch_price_factor)

    def leases(self) -> Leases:
        return Leases(lease_s=self.lease_s)

    def prices(self) -> Prices:
        return Prices(self.prompt_price_per_million, self.completion_price_per_million)

    def token_counter(self) -> tuple[TokenCounter, str]:
        """How to count prompt tokens before sending (and what that is called, for metadata): the embedded
        teacher's own tokenizer when provisioned; ~4 characters a token for a remote endpoint."""
        if self.mode == "embedded":
            try:
                return tokenizer_token_counter(
                    check_offline_model(offline_model_dir(self.cache_dir))
                ), f"{MODEL_NAME} tokenizer"
            except OfflineModelError:
                return characters_token_count, "~4 characters a token (offline model not provisioned)"
        return characters_token_count, "~4 characters a token"

    def sampling(self) -> SamplingParams:
        return SamplingParams(self.temperature, self.top_p, self.max_tokens, self.seed, self.top_logprobs)

    def budget_limits(self) -> BudgetLimits:
        return BudgetLimits(self.budget_usd, self.daily_budget_usd)

    def spec(self) -> TeacherSpec:
        """This teacher as both collection paths ask it; starts the embedded server if needed. Its batch settings
        are read only for batch collection, so an unused out-of-range batch setting fails nothing."""
        batch = self.batch_settings() if self.collection == "batch" else BatchSettings()
        return TeacherSpec(self.endpoint(), self.sampling(), self.client_limits(), self.prices(), batch)

    def client(self, store: ResponseStore | None = None, budget: Budget | None = None) -> TeacherClient:
        """A fresh online client (enter it with ``async with``): :meth:`TeacherSpec.client`."""
        return self.spec().client(store, budget)

    def client_limits(self) -> ClientLimits:
        """Concurrency, rate limits, timeout and retries of every client of this teacher (collection, evaluation)."""
        return ClientLimits(
            max_concurrency=self.max_concurrency,
            requests_per_minute=self.requests_per_minute,
            tokens_per_minute=self.tokens_per_minute,
            timeout_s=self.timeout_s,
            max_attempts=self.max_attempts,
            max_connection_failures=self.max_connection_failures,
        )
