"""usage_nano_cores from successive samples, and a pod's totals from its containers."""

from __future__ import annotations

from cri.stats import CpuRates, sum_usage
from runtime.cgroup_stats import CgroupUsage, CpuUsage, MemoryUsage

S = 1_000_000_000


def test_rate_is_the_cpu_time_used_per_second_since_the_previous_sample() -> None:
    rates = CpuRates(min_window_ns=S // 2)
    assert rates.rate("c", 10 * S, 5 * S) is None  # nothing to compare with yet
    assert rates.rate("c", 12 * S, 6 * S) == S // 2  # 1 s of CPU in 2 s: half a core
    # Too close to the previous sample: the previous rate, and the base stays.
    assert rates.rate("c", 12 * S + 1000, 6 * S + 1000) == S // 2
    assert rates.rate("c", 13 * S, 8 * S) == 2 * S  # two cores busy for the last second
    assert rates.rate("other", 13 * S, 1) is None  # keys are independent


def test_rate_starts_over_when_the_counter_goes_back() -> None:
    rates = CpuRates(min_window_ns=0)
    rates.rate("c", 1 * S, 9 * S)
    assert rates.rate("c", 2 * S, 1 * S) is None  # a new cgroup under the same key
    assert rates.rate("c", 3 * S, 2 * S) == S


def test_forgotten_keys_start_over() -> None:
    rates = CpuRates(min_window_ns=0)
    rates.rate("a", S, S)
    rates.rate("b", S, S)
    rates.keep_only({"b"})
    assert rates.rate("a", 2 * S, 2 * S) is None
    assert rates.rate("b", 2 * S, 2 * S) == S


def _usage(ts: int, cpu_ns: int, ws: int, pids: int | None) -> CgroupUsage:
    memory = MemoryUsage(usage_bytes=ws * 2, working_set_bytes=ws, rss_bytes=ws, page_faults=3)
    return CgroupUsage(ts, CpuUsage(cpu_ns), memory, pids)


def test_pod_totals_add_up_the_containers() -> None:
    total = sum_usage([_usage(5, 100, 10, 2), _usage(7, 50, 20, None)])
    assert total is not None and total.cpu is not None and total.memory is not None
    assert total.timestamp_ns == 7
    assert total.cpu.usage_ns == 150
    assert (total.memory.working_set_bytes, total.memory.usage_bytes) == (30, 60)
    assert total.memory.page_faults == 6
    # No limit of its own: a sum of containers has no available bytes.
    assert total.memory.available_bytes is None
    assert total.pids == 2
    assert sum_usage([]) is None
