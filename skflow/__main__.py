"""``python -m skflow``: the command line (see :mod:`skflow._cli`)."""

from skflow._cli import main

if __name__ == "__main__":
    raise SystemExit(main(prog="python -m skflow"))
