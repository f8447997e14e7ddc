"""``python -m distrib``: the same as the ``distrib`` command."""

from distrib.cli import main

if __name__ == "__main__":
    main()
