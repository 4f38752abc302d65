"""Development servers for tests and benchmarks (loopback OpenAI-compatible servers); not part of the wheel."""
