"""Metadata helpers shared by the asset modules."""

import base64

from dagster import MetadataValue


def png_markdown(png: bytes, alt: str) -> MetadataValue:
    """A PNG embedded in Markdown metadata, so the UI shows the plot without a file server."""
    return MetadataValue.md(f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})")
