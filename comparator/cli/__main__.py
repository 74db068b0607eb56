"""``python -m comparator.cli``: the same as the ``dumpcmp`` console script."""

from comparator.cli import main

main()
