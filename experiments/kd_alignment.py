"""Aligned share of response tokens between the student's tokenizer and a different-family teacher tokenizer.

Student: the offline SmolLM2 tokenizer (GPT-2-style byte-level BPE, 49k tokens). Teacher: Mistral's Tekken
(tiktoken-style byte-level BPE, 131k tokens, another pre-tokenisation regex; the tokenizer of Mistral's
NeMo-and-later API models), read from ``tekken_240911.json`` as the ``mistral_common`` PyPI package ships it.
The teacher is a *stand-in*: its tokens are Tekken's tokenisation of each real tweet, which is what an API
teacher that produced that text would return (``bytes`` exact); the share does not depend on logprob values.

Each tweet is the response of a chat-templated example, tokenised as the mask builder does, and aligned with
:func:`opengrok_dagster.distill.align.align_example` (the pipeline's own code path). Reported per corpus:
the share of student response tokens with a target (target >= 0.80), the share of teacher tokens that are
a single student token (how much of the teacher's alternatives can map at all), and the alignment's CPU time.

    .venv/bin/python -m experiments.kd_alignment
    .venv/bin/python -m experiments.kd_alignment --tekken /path/to/tekken_240911.json --per-corpus 500

Without ``--tekken`` the file is taken from an installed ``mistral_common``, else from
``~/.cache/opengrok/tokenizers/``, where it is first extracted from the wheel that ``pip download
mistral_common==1.12.0 --no-deps`` fetches (the package itself is not installed: its numpy bound is
below this project's).
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
from transformers import AutoTokenizer  # noqa: E402  (after the thread-pool setting)
from transformers.convert_slow_tokenizer import TikTokenConverter  # noqa: E402

from opengrok_dagster.distill.align import (  # noqa: E402
    StudentVocabulary,
    TeacherToken,
    align_example,
    decode_byte_level,
)
from opengrok_dagster.masks.render import ChatRenderer  # noqa: E402
from opengrok_dagster.offline_model import check_offline_model, offline_model_dir  # noqa: E402


DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
TEKKEN_FILE = "tekken_240911.json"
MISTRAL_COMMON = "mistral_common==1.12.0"
PROMPT = "Write a short social-media post about today's news."


def tekken_path(given: str | None) -> Path:
    """``given``, or the file of an installed mistral_common, or the cached copy (extracted on first use)."""
    if given:
        return Path(given)
    spec = importlib.util.find_spec("mistral_common")
    if spec and spec.submodule_search_locations:
        installed = Path(list(spec.submodule_search_locations)[0]) / "data" / TEKKEN_FILE
        if installed.is_file():
            return installed
    cached = Path.home() / ".cache" / "opengrok" / "tokenizers" / TEKKEN_FILE
    if not cached.is_file():
        print(f"fetching {TEKKEN_FILE} from the {MISTRAL_COMMON} wheel", file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory() as scratch:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", MISTRAL_COMMON, "--no-deps", "-q", "-d", scratch], check=True
            )
            [wheel] = Path(scratch).glob("mistral_common-*.whl")
            cached.parent.mkdir(parents=True, exist_ok=True)
            with zipfile.ZipFile(wheel) as archive:
                partial = cached.with_suffix(".partial")
                partial.write_bytes(archive.read(f"mistral_common/data/{TEKKEN_FILE}"))
                partial.replace(cached)
    return cached


class _TekkenConverter(TikTokenConverter):
    """Tekken's ranks and regex into a ``tokenizers`` BPE (as transformers converts any tiktoken vocabulary)."""

    def __init__(self, path: Path):
        self.tekken = json.loads(path.read_text())
        super().__init__(vocab_file=str(path), pattern=self.tekken["config"]["pattern"])

    def load_tiktoken_bpe(self, tiktoken_url: str) -> dict[bytes, int]:
        config = self.tekken["config"]
        size = config["default_vocab_size"] - config["default_num_special_tokens"]  # as mistral_common's Tekkenizer
        return {base64.b64decode(entry["token_bytes"]): entry["rank"] for entry in self.tekken["vocab"][:size]}


def corpora(per_corpus: int) -> dict[str, list[str]]:
    """English tweets (the pipeline's domain) and, for contrast, Spanish, Greek and Japanese ones."""

    def lines(path: Path) -> list[str]:
        return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def topic_xl(language: str) -> list[str]:
        files = [DATA / "tweet_topic_xl" / language / f"{language}_{split}.jsonl" for split in ("train", "validation")]
        return [json.loads(line)["text"] for path in files for line in lines(path)][:per_corpus]

    return {
        "TweetEval sentiment val (en)": lines(DATA / "tweeteval" / "sentiment" / "val_text.txt")[:per_corpus],
        "TweetEval offensive train (en)": lines(DATA / "tweeteval" / "offensive" / "train_text.txt")[:per_corpus],
        "TweetTopic XL (en)": topic_xl("en"),
        "TweetTopic XL (es)": topic_xl("es"),
        "TweetTopic XL (gr)": topic_xl("gr"),
        "TweetTopic XL (ja)": topic_xl("ja"),
    }


def tekken_pieces(teacher, text: str) -> list[bytes]:
    """Tekken's tokens of ``text`` as bytes (the converted tokenizer spells them as byte-level symbols)."""
    return [decode_byte_level(teacher.id_to_token(i)) for i in teacher.encode(text, add_special_tokens=False).ids]


def measure(texts: list[str], student, vocabulary: StudentVocabulary, teacher) -> dict:
    renderer = ChatRenderer(student)
    totals = dict.fromkeys(("responses", "response_tokens", "aligned", "teacher_tokens", "teacher_single"), 0)
    totals["cpu_s"] = 0.0
    for text in texts:
        rendered = renderer.render(None, PROMPT, text)
        span = rendered.spans["response"]
        encoded = student(rendered.text, add_special_tokens=False, return_offsets_mapping=True)
        start = next(i for i, (_, end) in enumerate(encoded["offset_mapping"]) if end > span[0])
        response = rendered.text[span[0] : span[1]]
        pieces = tekken_pieces(teacher, response)
        tokens = [TeacherToken(piece.decode(errors="replace"), piece, -0.1, ()) for piece in pieces]
        began = time.process_time()
        targets = align_example(encoded["input_ids"], rendered.text, span, start, tokens, vocabulary)
        totals["cpu_s"] += time.process_time() - began
        totals["responses"] += 1
        totals["response_tokens"] += targets.response_tokens
        totals["aligned"] += targets.aligned_tokens
        totals["teacher_tokens"] += len(pieces)
        totals["teacher_single"] += sum(piece in vocabulary.by_bytes for piece in pieces)
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tekken", help=f"path to {TEKKEN_FILE} (default: from mistral_common or the cache)")
    parser.add_argument("--per-corpus", type=int, default=2000, help="tweets per corpus")
    args = parser.parse_args()
    student = AutoTokenizer.from_pretrained(check_offline_model(offline_model_dir()))
    vocabulary = StudentVocabulary.of(student)
    teacher = _TekkenConverter(tekken_path(args.tekken)).converted()
    rows, overall, english = [], {"response_tokens": 0, "aligned": 0}, {"response_tokens": 0, "aligned": 0}
    for name, texts in corpora(args.per_corpus).items():
        totals = measure(texts, student, vocabulary, teacher)
        for pooled in (overall, english) if name.endswith("(en)") else (overall,):
            pooled["response_tokens"] += totals["response_tokens"]
            pooled["aligned"] += totals["aligned"]
        rows.append(
            f"| {name} | {totals['responses']:,} | {totals['response_tokens']:,} | {totals['teacher_tokens']:,} | "
            f"{totals['aligned'] / totals['response_tokens']:.1%} | "
            f"{totals['teacher_single'] / totals['teacher_tokens']:.1%} | "
            f"{1000 * totals['cpu_s'] / totals['responses']:.2f} |"
        )
    share = english["aligned"] / english["response_tokens"]
    print(
        "Student: SmolLM2-135M-Instruct tokenizer. Teacher: Mistral Tekken (`tekken_240911.json` from the "
        "`mistral_common` 1.12 wheel), a *stand-in* teacher whose tokens are Tekken's tokenisation of each tweet.\n"
    )
    print(
        "| corpus | responses | student response tokens | teacher tokens | aligned share | teacher tokens "
        "that are one student token | alignment CPU ms / response |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))
    print(
        f"\nEnglish tweets: aligned share **{share:.1%}** of {english['response_tokens']:,} student response tokens "
        f"(target >= 80%: {'met' if share >= 0.8 else 'NOT met'}); all corpora pooled: "
        f"{overall['aligned'] / overall['response_tokens']:.1%} of {overall['response_tokens']:,}. "
        "SmolLM2 splits Greek and Japanese characters into byte tokens that no whole-character teacher token "
        "matches, so those scripts align poorly. Alignment time is this process's CPU time (the share is "
        "deterministic; the time was taken on a machine shared with other jobs, see the load average)."
    )


if __name__ == "__main__":
    main()
