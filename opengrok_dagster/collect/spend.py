"""What the teacher cost: the response store's spend per teacher, collection partition, run and UTC day, with the
share paid at the batch price, for the evaluation report and the eval_report asset's metadata.

Each response's cost is what it was priced at when it arrived (the prices configured then; a batch's answers at
the batch price), so changing the prices later does not rewrite what was spent. A store that holds no
response, or only responses priced at 0 (the embedded stand-in teacher, prices never set), reads as such.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from opengrok_dagster.collect.result import Prices
from opengrok_dagster.collect.store import SPEND_GROUPS, ResponseStore


PRICE_VARIABLES = "OPENGROK_TEACHER_PROMPT_PRICE and OPENGROK_TEACHER_COMPLETION_PRICE"


@dataclass(frozen=True)
class SpendLine:
    """The stored responses of one group (a teacher, partition, run or day) and what they cost."""

    key: str
    requests: int  # stored outcomes, one per prompt (an error row replaced by a later answer counts once)
    errors: int
    prompt_tokens: int
    completion_tokens: int
    usd: float
    batch_requests: int  # answered through the Batch API, at the batch price
    batch_usd: float


@dataclass(frozen=True)
class CollectionSpend:
    """Spend of every response in one store: the total, and lines per view of :data:`SPEND_VIEWS`."""

    store: Path
    total: SpendLine
    by: dict[str, list[SpendLine]]
    unsettled_requests: int  # budget reservations never settled (in flight, or a run killed mid-request)
    unsettled_usd: float  # at their worst case: the provider may have billed them

    @property
    def priced(self) -> bool:
        return self.total.usd > 0


SPEND_VIEWS = tuple(SPEND_GROUPS)


def collection_spend(store_path: str | Path) -> CollectionSpend | None:
    """The spend recorded in the response store at ``store_path``; None when there is none (nothing collected).
    Never creates a store."""
    store_path = Path(store_path)
    if not store_path.is_file():
        return None
    store = ResponseStore(store_path)
    try:
        total = store.responses.spend_by()
        by = {view: [SpendLine(**row) for row in store.responses.spend_by(view)] for view in SPEND_VIEWS}
        unsettled_requests, unsettled_usd = store.spend.unsettled()
    finally:
        store.close()
    empty = SpendLine("total", 0, 0, 0, 0, 0.0, 0, 0.0)
    return CollectionSpend(
        store_path, SpendLine(**total[0]) if total else empty, by, unsettled_requests, unsettled_usd
    )


def pricing_description(teacher: str, prices: Prices, stand_in: bool, batch_price_factor: float) -> str:
    """One sentence naming the configured teacher for what it is and how its requests are priced."""
    if stand_in:
        return (
            f"{teacher}, a stand-in for a paid teacher: it runs on this machine and is priced at $0. A paid "
            f"teacher (OPENGROK_TEACHER_BASE_URL) is priced with {PRICE_VARIABLES} (USD per 1M tokens)."
        )
    if prices == Prices():
        return f"{teacher}, priced at $0: no prices are set. Set {PRICE_VARIABLES} (USD per 1M tokens) to its prices."
    return (
        f"{teacher}, at USD {prices.prompt_per_million:g} per 1M prompt tokens and {prices.completion_per_million:g} "
        f"per 1M completion tokens (set by {PRICE_VARIABLES}); Batch API results at {batch_price_factor:g}x that "
        "(OPENGROK_TEACHER_BATCH_PRICE_FACTOR)."
    )


@dataclass(frozen=True)
class TeacherSpend:
    """What the report says about spend: the configured teacher (see :func:`pricing_description`), the response
    store's path, its spend (None: no store there), and the label the embedded stand-in's responses are stored
    under, so that its lines read as the stand-in's."""

    teacher: str
    store: Path
    collection: CollectionSpend | None
    stand_in_labels: frozenset[str] = frozenset()  # the embedded stand-in teachers' labels

    @classmethod
    def read(cls, teacher: str, store_path: str | Path, stand_in_labels: frozenset[str] = frozenset()) -> TeacherSpend:
        return cls(teacher, Path(store_path), collection_spend(store_path), stand_in_labels)

    def teacher_name(self, label: str) -> str:
        return f"{label} (embedded stand-in teacher, $0)" if label in self.stand_in_labels else label
