"""Development tools for tests and benchmarks: loopback OpenAI-compatible servers standing in for what a real
teacher cannot be made to do (inject faults on demand, a Batch API). Not part of the installed package; import it
from the repository root."""
