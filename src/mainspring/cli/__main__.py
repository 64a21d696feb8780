"""``python -m mainspring.cli``: the same as the ``mainspring`` command."""

from mainspring.cli import main

main()
