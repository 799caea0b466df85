"""Text-generation engines: the torch engine (in process) and the vLLM command line (exec'd)."""
