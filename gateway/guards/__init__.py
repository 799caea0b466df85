"""Safety checks (guards): detectors, the stream window, and the request stage that runs them
(docs/guards.md)."""
