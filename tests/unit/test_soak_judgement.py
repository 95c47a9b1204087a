"""The soak's judgement of skiffd's samples (tests/integration/soak.py): flat but noisy
series pass, a warm-up may climb, a steady climb fails."""

from __future__ import annotations

from tests.integration.soak import Limits, Margin, Sample, growth, percentile, table

FDS = Limits(peak=Margin(8), floor=Margin(2))  # tighter than the soak's, for round figures


def test_noise_around_a_steady_state_passes() -> None:
    # Between cycles the floor comes back to 130; calls in flight add up to 8.
    noisy = [130, 136, 131, 138, 130, 133, 130, 137, 131, 130, 138, 130]
    assert growth("fds", noisy, FDS) == []


def test_a_warm_up_may_climb() -> None:
    warm_up = [20, 60, 100, 120, 130, 131, 130, 132, 130, 131, 130, 131]
    assert growth("fds", warm_up, FDS) == []


def test_a_linear_leak_fails() -> None:
    # One descriptor kept per cycle: the floor of the last third is 4 above.
    leak = [130 + i for i in range(12)]
    assert growth("fds", leak, FDS) == [
        "fds: floor grew from 134 (middle third) to 138 (last third), beyond +2 +0%"
    ]


def test_a_leak_hidden_under_noise_still_lifts_the_floor() -> None:
    leak = [130 + i // 2 + (8 if i % 2 else 0) for i in range(18)]
    assert [p.split(":")[1].split()[0] for p in growth("fds", leak, FDS)] == ["floor"]


def test_memory_margins_are_relative_too() -> None:
    rss = Limits(peak=Margin(3 * 1024, 0.03), floor=Margin(3 * 1024, 0.03))
    mib = 1024
    steady = [100 * mib] * 6 + [105 * mib] * 3  # 5% above: within 3 MiB + 3%
    assert growth("RSS", steady, rss) == []
    assert growth("RSS", [100 * mib] * 6 + [107 * mib] * 3, rss) != []


def test_too_few_samples_are_no_verdict() -> None:
    assert growth("tasks", [1, 1, 1, 1, 1], FDS) == [
        "tasks: 5 samples are too few to judge (6 at least)"
    ]


def test_the_table_has_a_row_per_window() -> None:
    samples = [Sample(at=float(t), rss_kib=2048, fds=10 + t, threads=5, tasks=3) for t in range(20)]
    latencies = [(float(t), float(t)) for t in range(20)]
    rows = table(samples, latencies, 10).splitlines()
    assert len(rows) == 3
    assert rows[1].split() == ["0-10", "2.0", "10-19", "5", "3", "4.5", "9.0"]
    assert percentile([float(v) for v in range(1, 101)], 0.99) == 99
