"""``python -m ddpm``: the same as the ``ddpm`` command."""

from ddpm.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
