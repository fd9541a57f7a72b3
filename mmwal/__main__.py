"""``python -m mmwal``: the same as the ``mmwal`` command."""

from .cli import main

raise SystemExit(main())
