"""Looking inside a mask table: one row per token, unmasked rates by tag, a p histogram and marked-up samples."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pandas as pd

from opengrok_dagster.masks.builder import TOKEN_LIST_COLUMNS


def explode_example(row: pd.Series | dict) -> pd.DataFrame:
    """One row per token of one example: its text, char span, word and every feature, p and m."""
    row = dict(row)
    text, words = row["text"], list(row["words"])
    starts, ends = row["char_start"], row["char_end"]
    frame = pd.DataFrame({column: list(row[column]) for column in TOKEN_LIST_COLUMNS})
    frame.insert(0, "position", np.arange(len(frame)))
    frame.insert(2, "token", [text[s:e] for s, e in zip(starts, ends)])
    frame.insert(3, "word", [words[w] if w >= 0 else "" for w in frame["word_index"]])
    frame["in_response"] = frame["position"] >= row["response_start"]
    return frame


def content_tokens(table: pd.DataFrame) -> pd.DataFrame:
    """Every non-template token of the table (the ones the mask can hide), with its tag, relation, p and m."""
    content = [np.asarray(t) == 0 for t in table["template_token"]]
    pick = lambda column: np.concatenate([np.asarray(v)[c] for v, c in zip(table[column], content)])  # noqa: E731
    return pd.DataFrame({"pos_tag": pick("pos_tag"), "dep_rel": pick("dep_rel"), "p": pick("p"), "m": pick("m")})


@dataclass(frozen=True)
class MaskSummary:
    unmasked_rate: float
    unmasked_rate_all_tokens: float
    content_tokens: int
    tokens: int
    by_pos: pd.DataFrame
    by_dep: pd.DataFrame


def summarise(table: pd.DataFrame) -> MaskSummary:
    tokens = content_tokens(table)
    all_m = np.concatenate([np.asarray(m) for m in table["m"]])

    def by(column: str) -> pd.DataFrame:
        grouped = tokens.assign(**{column: tokens[column].replace("", "(none)")}).groupby(column)["m"]
        return grouped.agg(tokens="size", unmasked_rate="mean").sort_values("tokens", ascending=False).reset_index()

    return MaskSummary(
        unmasked_rate=float(tokens["m"].mean()) if len(tokens) else 1.0,
        unmasked_rate_all_tokens=float(all_m.mean()),
        content_tokens=len(tokens),
        tokens=len(all_m),
        by_pos=by("pos_tag"),
        by_dep=by("dep_rel"),
    )


def p_histogram_png(table: pd.DataFrame, bins: int = 20) -> bytes:
    """Base64 PNG of the distribution of p over content tokens, for embedding in Markdown."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    values = content_tokens(table)["p"]
    figure, axes = plt.subplots(figsize=(6, 3), dpi=80)
    axes.hist(values, bins=bins, range=(0.0, 1.0), color="#4a7ab7")
    axes.set_xlabel("p (probability a token stays attendable)")
    axes.set_ylabel("content tokens")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


def _escape(text: str) -> str:
    for char in "\\`*_[]<>|~#":
        text = text.replace(char, "\\" + char)
    return text.replace("\n", "⏎")


def render_markdown(row: pd.Series | dict) -> str:
    """The example's prompt and response with masked tokens struck through (~~x~~, a masked space as ~~␣~~);
    template tokens are left out and each message starts a new paragraph."""
    tokens = explode_example(row)
    parts = {False: [], True: []}
    shown_until = 0
    for token in tokens.itertuples():
        part = parts[token.in_response]
        if token.template_token:
            if part and part[-1] != "<br>":
                part.append("<br>")
            continue
        piece = row["text"][
            max(token.char_start, shown_until) : token.char_end
        ]  # byte pieces of one emoji share a span
        shown_until = max(shown_until, token.char_end)
        if not piece:
            continue
        lead = piece[: len(piece) - len(piece.lstrip())]
        body = _escape(piece.strip())
        if not body:
            part.append("~~␣~~" if not token.m else " ")
        else:
            part.append(f"{_escape(lead)}~~{body}~~" if not token.m else f"{_escape(lead)}{body}")
    show = lambda pieces: "".join(pieces).strip().removeprefix("<br>").removesuffix("<br>")  # noqa: E731
    return (
        f"**{row['example_id']}** ({row['split']}, {len(tokens)} tokens, response from token {row['response_start']})\n\n"
        f"- prompt: {show(parts[False])}\n- response: {show(parts[True])}"
    )
