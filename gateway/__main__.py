from gateway.cli import main

# Guarded: `serve --workers` spawns interpreters that import this module as `__mp_main__`.
if __name__ == "__main__":
    raise SystemExit(main())
