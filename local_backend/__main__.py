"""`python -m local_backend …` is the `local-backend` console script."""

from local_backend.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
