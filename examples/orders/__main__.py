"""``python -m examples.orders``: the order demo (see ``examples.orders.demo``)."""

import sys

from examples.orders.demo import main

sys.exit(main())
