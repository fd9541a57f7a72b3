"""``python -m mmwal.stress``: the same as ``mmwal stress``."""

import argparse

from . import add_arguments, run

parser = argparse.ArgumentParser(
    prog="python -m mmwal.stress",
    description="Prove mmwal's guarantees on this disk: writers, readers and a checkpointer "
    "under a kill -9 loop, checked against an expected-state oracle.")
add_arguments(parser)
raise SystemExit(run(parser.parse_args()))
