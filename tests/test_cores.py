"""The cores' cache-line round trip that `mnistlab bench` records around each epoch."""

import os

import pytest

from mnistlab.bench import cores

TWO_CPUS = len(os.sched_getaffinity(0)) >= 2  # every machine this suite runs on has two or more


def test_the_round_trip_between_two_cpus_is_measured_in_nanoseconds():
    assert TWO_CPUS
    first, second = sorted(os.sched_getaffinity(0))[:2]
    ns = cores.round_trip_ns()
    assert isinstance(ns, float) and 1 < ns < 1e6  # tens to hundreds of ns on real hardware, never 0
    back = cores.round_trip_ns((second, first), trips=10_000)  # either way round, fewer trips
    assert isinstance(back, float) and 1 < back < 1e6


def test_no_round_trip_without_two_cpus_or_a_compiler(monkeypatch, tmp_path):
    assert cores.round_trip_ns((0, 4096)) is None  # a CPU that is not there: the thread cannot be pinned
    with pytest.raises(ValueError, match="two different CPUs"):
        cores.round_trip_ns((0, 0))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert cores.round_trip_ns() is None
    monkeypatch.undo()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("CC", "no-such-compiler-here")
    cores._probe.cache_clear()
    try:
        assert cores.round_trip_ns() is None
        assert not list(tmp_path.rglob("*.so"))
    finally:
        cores._probe.cache_clear()
