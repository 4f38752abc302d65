"""OpenGrok: distil a teacher LLM into a small student for social-media text, as a Dagster asset graph.

Kept free of imports: the stage subpackages (``collect``, ``offline``, ...) are usable without Dagster,
and ``opengrok_dagster.definitions`` is where the Dagster layer is assembled.
"""

__version__ = "0.1.0"
