"""The settings of one stress run, resolved from the command line (or a Namespace)."""

from __future__ import annotations

import argparse
import dataclasses
import secrets
from dataclasses import dataclass
from typing import Any

__all__ = ["DURABILITY_CHOICES", "INJECT_KINDS", "PROFILES", "ROLE_KINDS", "Settings"]

#: Every kind of role process a run may start (and the killer may pick).
ROLE_KINDS = ("writer", "reader", "checkpointer", "compactor", "churner")

DURABILITY_CHOICES = ("mixed", "os", "fsync", "interval")
#: Violations the hidden ``--inject`` option plants to prove the checker can fail.
INJECT_KINDS = ("drop-ack", "reorder", "phantom", "duplicate", "resurrect")

#: Defaults of the options a profile sets; an explicit option always wins.
PROFILES: dict[str, dict[str, Any]] = {
    # Writers are paced (--max-rate, calls/s each) so that the checkers keep up and
    # the final verification stays short; --max-rate 0 lets them run flat out.
    "full": {"duration": 120.0, "writers": 4, "readers": 2, "checkpoint_interval": 4.0,
             "kill_interval": 1.0, "max_rate": 200.0, "batch_size": 32,
             "compact_interval": 6.0, "churners": 1, "churn_rate": 50.0},
    # --quick: under a minute on 2 cores, start to verdict.
    "quick": {"duration": 20.0, "writers": 3, "readers": 2, "checkpoint_interval": 1.5,
              "kill_interval": 0.4, "max_rate": 250.0, "batch_size": 16,
              "compact_interval": 2.0, "churners": 1, "churn_rate": 50.0},
}


@dataclass
class Settings:
    """Everything a run needs; ``as_dict()`` goes into the JSON report."""

    dir: str | None = None
    duration: float = 120.0
    writers: int = 4
    readers: int = 2
    durability: str = "mixed"
    checkpoint_interval: float = 5.0
    kill_interval: float = 1.0
    seed: int = 0
    quick: bool = False
    json: str | None = None
    plot: str | None = None
    scenario: str = "default"
    keep: bool = False
    segment_bytes: int = 64 << 20
    batch_size: int = 64
    many_percent: int = 30
    dim: int = 16
    max_rate: float = 0.0
    quiet: bool = False
    inject: str | None = None
    keep_checkpoints: int = 2
    verify_interval: float = 0.0
    #: Seconds between the compactor's ``Store.compact()`` calls (0: no compactor).
    compact_interval: float = 0.0
    #: Config.max_fragments of every role (small: versions of several fragments are
    #: the normal state, and checkpoints with auto_compact compact often).
    max_fragments: int = 4
    #: Churner processes: upserts and removes of a small key space (replaced and
    #: removed rows, so deletion vectors), each with its own journal.
    churners: int = 0
    churn_keys: int = 256
    #: Ops per second per churner (0: as fast as possible).
    churn_rate: float = 50.0
    #: The checkpointer and the compactor draw keep_checkpoints (1..3) per incarnation
    #: unless --keep-checkpoints was given or the scenario turns this off.
    vary_keep: bool = True
    #: The compactor runs mmwal.verify() after each compaction that published a version.
    verify_compactions: bool = False
    #: Relative odds that the killer picks each kind of role.  Readers write
    #: nothing, and a restarted reader rebuilds its model with a full scan: by
    #: default they are killed less often.
    kill_weights: dict[str, float] = dataclasses.field(
        default_factory=lambda: {"writer": 0.5, "reader": 0.15, "checkpointer": 0.2,
                                 "compactor": 0.1, "churner": 0.05})
    #: The options given explicitly (a scenario changes only the others).
    given: list[str] = dataclasses.field(default_factory=list)

    @classmethod
    def from_namespace(cls, args: argparse.Namespace) -> Settings:
        """Resolve a Namespace (missing attributes and ``None`` take the profile's value)."""
        quick = bool(getattr(args, "quick", False))
        profile = PROFILES["quick" if quick else "full"]
        values: dict[str, Any] = {}
        given = []
        for f in dataclasses.fields(cls):
            if f.name == "given":
                continue
            got = getattr(args, f.name, None)
            if got is None:
                got = profile.get(f.name, f.default)
                factory: Any = f.default_factory
                if got is dataclasses.MISSING and factory is not dataclasses.MISSING:
                    got = factory()
            else:
                given.append(f.name)
            values[f.name] = got
        values["given"] = given
        values["quick"] = quick
        if not values["seed"]:
            values["seed"] = secrets.randbelow(1 << 31) + 1
        s = cls(**values)
        s.check()
        return s

    def check(self) -> None:
        from ._workload import MAX_BATCH, MAX_WRITERS

        problems = []
        if not self.duration > 0:
            problems.append("--duration must be > 0")
        if not 1 <= self.writers <= min(MAX_WRITERS, 256):
            problems.append("--writers must be 1..256")
        if not 0 <= self.readers <= 64:
            problems.append("--readers must be 0..64")
        if self.durability not in DURABILITY_CHOICES:
            problems.append(f"--durability must be one of {DURABILITY_CHOICES}")
        if self.checkpoint_interval < 0 or self.kill_interval < 0:
            problems.append("--checkpoint-interval and --kill-interval must be >= 0 (0: off)")
        if self.segment_bytes < 4096:
            problems.append("--segment-bytes must be >= 4096")
        if not 1 <= self.batch_size < MAX_BATCH:
            problems.append(f"--batch-size must be 1..{MAX_BATCH - 1}")
        if not 0 <= self.many_percent <= 100:
            problems.append("--many-percent must be 0..100")
        if not 4 <= self.dim <= 4096:
            problems.append("--dim must be 4..4096")
        if self.max_rate < 0:
            problems.append("--max-rate must be >= 0 (0: as fast as possible)")
        if not 0 <= self.keep_checkpoints <= 100:
            problems.append("--keep-checkpoints must be 0..100")
        if self.verify_interval < 0:
            problems.append("--verify-interval must be >= 0 (0: off)")
        if not set(self.kill_weights) <= set(ROLE_KINDS) or \
                any(not w >= 0 for w in self.kill_weights.values()):
            problems.append(f"kill weights must give odds >= 0 to some of {ROLE_KINDS}")
        if self.compact_interval < 0:
            problems.append("--compact-interval must be >= 0 (0: no compactor)")
        if not 1 <= self.max_fragments <= 1 << 16:
            problems.append("--max-fragments must be 1..65536")
        if not 0 <= self.churners <= 64:
            problems.append("--churners must be 0..64")
        if not 1 <= self.churn_keys < 1 << 16:
            problems.append("--churn-keys must be 1..65535")
        if self.churn_rate < 0:
            problems.append("--churn-rate must be >= 0 (0: as fast as possible)")
        if self.inject is not None and self.inject not in INJECT_KINDS:
            problems.append(f"--inject must be one of {INJECT_KINDS}")
        if problems:
            raise ValueError("; ".join(problems))

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def keep_of(self, rng: Any) -> int:
        """keep_checkpoints of one checkpointer/compactor incarnation."""
        if self.vary_keep and "keep_checkpoints" not in self.given:
            return int(rng.choice((1, 2, 3)))
        return self.keep_checkpoints

    def durability_of(self, writer: int, incarnation: int) -> str:
        """The durability of one writer incarnation ("mixed": all three, in rotation)."""
        if self.durability != "mixed":
            return self.durability
        from ._journal import DURABILITIES

        return DURABILITIES[(writer + incarnation) % len(DURABILITIES)]
