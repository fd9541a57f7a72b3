"""Scenarios: what a stress run does besides its writers, readers, checkpointer and killer.

A scenario is a :class:`Scenario` subclass registered with :func:`register`;
``--scenario NAME`` picks it.  Its hooks run at fixed points of a run, so a new
fault model plugs in without touching the roles or the oracle:

=====================  ===========================================================
hook                   where it runs, what it may do
=====================  ===========================================================
``configure``          coordinator, before anything starts: adjust the Settings
``role_setup``         every role process, before it opens the store: install an
                       I/O layer (``mmwal._io.set_layer``), set up fault points
``tolerated``          a writer whose store call raised: True when the error is
                       one this scenario provokes (the op is journaled as failed
                       and the writer reopens its Store), False makes it a
                       violation
``before_verify``      coordinator, after every role stopped and before the
                       final verification: e.g. drop unsynced writes
``must_survive``       oracle: whether an acknowledged op of this durability
                       must still exist at the end
=====================  ===========================================================

The ``default`` scenario is kill -9 only: every acknowledged write must survive
in every durability mode, because ``"os"`` durability puts the record in the
page cache, which survives the death of any process.
"""

from __future__ import annotations

from typing import Any

from ._settings import Settings

__all__ = ["SCENARIOS", "Scenario", "get", "register"]


class Scenario:
    """The base scenario (also ``default``): SIGKILLs only, every hook a no-op."""

    name = "default"
    help = ("kill -9 loop: writers, readers and a checkpointer SIGKILLed at random; every "
            "acknowledged write must survive in every durability mode")

    def configure(self, settings: Settings) -> None:
        """Adjust the settings before the run starts (coordinator)."""

    def role_setup(self, role: str, settings: Settings) -> None:
        """Prepare a role process before it opens the store (``role``: "writer-0", ...)."""

    def tolerated(self, role: str, exc: BaseException) -> bool:
        """Whether ``exc`` raised by a store call is a fault this scenario provokes."""
        return False

    def before_verify(self, store_path: str, settings: Settings) -> None:
        """Runs after every role stopped, before the final verification (coordinator)."""

    def must_survive(self, durability: str) -> bool:
        """Whether an acknowledged write made with ``durability`` must exist at the end."""
        return True

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "help": self.help}


SCENARIOS: dict[str, type[Scenario]] = {}


def register(cls: type[Scenario]) -> type[Scenario]:
    """Class decorator: make ``cls`` selectable as ``--scenario cls.name``."""
    if not cls.name or (cls.name in SCENARIOS and SCENARIOS[cls.name] is not cls):
        raise ValueError(f"scenario name {cls.name!r} is empty or already taken")
    SCENARIOS[cls.name] = cls
    return cls


def get(name: str) -> Scenario:
    try:
        return SCENARIOS[name]()
    except KeyError:
        raise ValueError(f"unknown scenario {name!r}; choose one of {sorted(SCENARIOS)}") \
            from None


register(Scenario)


@register
class RetireRace(Scenario):
    """Readers racing checkpoints that retire the files under them.

    Aimed at the stale-view races: a Reader opened from a MANIFEST whose
    segments (and checkpoint) a newer checkpoint folds and deletes while the
    Reader is still catching up, often at a torn tail left by a writer killed
    mid-append.  Small segments (every checkpoint seals one, writers roll
    constantly), a checkpoint every second with ``keep_checkpoints=1`` (each
    publish deletes the previous checkpoint's files at once), readers killed
    and reopened often, and reader 0 running ``mmwal.verify()`` beside it all.
    A reader or verify that reports damage of this healthy store is a
    violation like any other.
    """

    name = "retire-race"
    help = ("readers opened, killed and reopened while a checkpoint every second with "
            "keep_checkpoints=1 retires the segments and checkpoint they are reading "
            "(64 KiB segments, torn tails from writers killed mid-append, verify() beside)")
    #: What the scenario sets, unless the option was given on the command line.
    DEFAULTS: dict[str, Any] = {  # noqa: RUF012 (read-only class data)
        "segment_bytes": 64 << 10, "checkpoint_interval": 1.0, "keep_checkpoints": 1,
        "verify_interval": 15.0, "readers": 3, "vary_keep": False,
        "kill_weights": {"writer": 0.4, "reader": 0.35, "checkpointer": 0.15,
                         "compactor": 0.05, "churner": 0.05},
    }

    def configure(self, settings: Settings) -> None:
        for name, value in self.DEFAULTS.items():
            if name not in settings.given:
                setattr(settings, name, value)


@register
class Compaction(RetireRace):
    """Versions of many fragments, deletion vectors and compactions, killed at random.

    Aimed at the version machinery: small segments and a checkpoint every
    second fold many small fragments; churners replace and remove documents
    of a small key space at a high rate, so nearly every checkpoint writes
    deletion vectors for older fragments and some fragments die whole; a
    compactor calls ``Store.compact()`` every second with random arguments
    (full, ``target_fragments`` 1..4, ``min_dead_fraction`` 0.05..0.5) and
    runs ``mmwal.verify()`` after each compaction that published; the
    checkpointer draws ``auto_compact`` and ``keep_checkpoints`` (1..3) per
    incarnation, with ``max_fragments=4``.  Both are killed mid-work.  Readers
    check every churn key (no acknowledged upsert lost, no replaced or removed
    value back) and hold snapshots for seconds while the versions under them
    retire.
    """

    name = "compaction"
    help = ("versions of many fragments with deletion vectors: churners replacing and "
            "removing keys, a checkpoint and a compact() (random arguments, verify() after) "
            "every second, max_fragments=4, keep_checkpoints 1..3; checkpointer and "
            "compactor killed mid-work; readers holding old snapshots while versions retire")
    DEFAULTS: dict[str, Any] = {  # noqa: RUF012 (read-only class data)
        "segment_bytes": 64 << 10, "checkpoint_interval": 1.0, "compact_interval": 1.0,
        "max_fragments": 4, "churners": 2, "churn_keys": 512, "churn_rate": 150.0,
        # Writers paced so that a long run stays small: the point is many versions
        # of few rows each, not a big store whose every compaction copies it all.
        "max_rate": 25.0, "batch_size": 8, "verify_interval": 20.0,
        "verify_compactions": True,
        "vary_keep": True, "readers": 2,
        "kill_weights": {"writer": 0.3, "reader": 0.15, "checkpointer": 0.2,
                         "compactor": 0.2, "churner": 0.15},
    }


class Campaign(Scenario):
    """A fault campaign run in-process by :mod:`mmwal._faults` instead of the kill loop.

    Duration, writers, readers and kill options do not apply; ``--quick`` and
    ``--seed`` do.  The report has every key of the default one, plus
    ``crash_states`` (power loss) or ``faults`` (I/O errors).
    """

    campaign = True


@register
class PowerLoss(Campaign):
    name = "powerloss"
    help = ("simulated power loss at every fsync/rename/unlink of a workload with creation, "
            "rolls, checkpoint publish and retirement; every crash state (unsynced data "
            "dropped, kept in part, garbled; directory entries lost) recovered and checked")


@register
class IOErrors(Campaign):
    name = "io-errors"
    help = ("EIO and ENOSPC at the Nth write/fsync/rename/mmap/create/unlink, once and "
            "persistently: typed errors, poisoning after a failed fsync, nothing "
            "acknowledged lost, a new Store continues once the fault is gone")
