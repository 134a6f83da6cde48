"""watch.unsettled: a model file counts as settled once it stopped changing for ``quiet`` s.

Pure: (size, mtime_ns) observations, a monotonic ``now`` and the wall clock are passed in.
"""

from __future__ import annotations

from supervisor.watch import Observation, unsettled

QUIET = 3.0
WALL = 1_700_000_000.0  # wall-clock seconds at monotonic 0


def ns(wall: float) -> int:
    return int(wall * 1e9)


def observe(stats: dict[str, tuple[int, int]], seen: dict[str, Observation],
            now: float) -> tuple[list[str], dict[str, Observation]]:
    return unsettled(stats, seen, now=now, wall_now=WALL + now, quiet=QUIET)


def test_a_file_still_being_written_stays_unsettled() -> None:
    seen: dict[str, Observation] = {}
    for step in range(20):
        now = step * 1.0
        # Growing, and its mtime follows the clock: a copy in progress.
        stats = {"m.gguf": (1000 * (step + 1), ns(WALL + now))}
        changing, seen = observe(stats, seen, now)
        assert changing == ["m.gguf"], step


def test_a_file_unchanged_for_quiet_seconds_of_observation_settles() -> None:
    # The mtime stays "recent" (a clock ahead of ours, say): only our own watching counts.
    stat = (1000, ns(WALL + 3600))
    changing, seen = observe({"m.gguf": stat}, {}, 10.0)
    assert changing == ["m.gguf"]
    assert seen == {"m.gguf": (stat, 10.0)}
    changing, seen = observe({"m.gguf": stat}, seen, 10.0 + QUIET - 0.01)
    assert changing == ["m.gguf"]
    assert seen == {"m.gguf": (stat, 10.0)}  # first seen time kept while unchanged
    changing, seen = observe({"m.gguf": stat}, seen, 10.0 + QUIET)
    assert changing == []


def test_a_change_restarts_the_quiet_period() -> None:
    future = ns(WALL + 3600)
    _, seen = observe({"m.gguf": (1000, future)}, {}, 0.0)
    changing, seen = observe({"m.gguf": (2000, future)}, seen, QUIET - 0.5)
    assert changing == ["m.gguf"]
    assert seen["m.gguf"][1] == QUIET - 0.5
    changing, seen = observe({"m.gguf": (2000, future)}, seen, QUIET + 1.0)
    assert changing == ["m.gguf"]  # only 1.5 s since the change
    changing, _ = observe({"m.gguf": (2000, future)}, seen, 2 * QUIET)
    assert changing == []


def test_a_file_with_an_old_mtime_is_settled_at_once() -> None:
    changing, seen = observe({"m.gguf": (1000, ns(WALL - QUIET))}, {}, 0.0)
    assert changing == []
    assert "m.gguf" in seen


def test_a_new_file_with_a_recent_mtime_is_unsettled() -> None:
    changing, _ = observe({"m.gguf": (1000, ns(WALL - QUIET + 0.5))}, {}, 0.0)
    assert changing == ["m.gguf"]


def test_a_touch_is_a_change_but_settles_by_its_mtime() -> None:
    old = (1000, ns(WALL - 3600))
    _, seen = observe({"m.gguf": old}, {}, 0.0)
    touched = (1000, ns(WALL + 5.0))
    changing, seen = observe({"m.gguf": touched}, seen, 5.0)
    assert changing == ["m.gguf"]
    changing, _ = observe({"m.gguf": touched}, seen, 5.0 + QUIET)
    assert changing == []


def test_each_file_is_judged_on_its_own_and_vanished_files_are_forgotten() -> None:
    stats = {"old.gguf": (1, ns(WALL - 3600)), "new.gguf": (1, ns(WALL))}
    changing, seen = observe(stats, {}, 0.0)
    assert changing == ["new.gguf"]
    changing, seen = observe({"new.gguf": (1, ns(WALL))}, seen, 1.0)
    assert changing == ["new.gguf"]
    assert set(seen) == {"new.gguf"}


def test_quiet_zero_settles_everything() -> None:
    changing, _ = unsettled({"m.gguf": (1, ns(WALL + 10))}, {}, now=0.0, wall_now=WALL,
                            quiet=0.0)
    assert changing == []


def test_unsettled_does_not_modify_its_inputs() -> None:
    stats = {"m.gguf": (1, ns(WALL))}
    seen: dict[str, Observation] = {"m.gguf": ((0, 0), 0.0), "gone": ((1, 1), 0.0)}
    before = (dict(stats), dict(seen))
    observe(stats, seen, 1.0)
    assert (stats, seen) == before
