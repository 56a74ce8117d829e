"""``python -m slimtrain``: the command line (see :mod:`slimtrain.cli`)."""

from slimtrain.cli import main

raise SystemExit(main())
