"""bench/grpc_transfer.py's pure helpers, so the benchmark does not rot."""

from bench import grpc_transfer as bench

RUN = {
    "bytes": 10**9,
    "upload_mb_s": 150.0,
    "upload_s": 6.6,
    "download_mb_s": 250.0,
    "download_s": 4.0,
    "upload_rss_growth_mb": 30.0,
    "download_rss_growth_mb": 5.0,
    "rpc_p50_ms": 0.5,
    "rpc_p99_ms": 1.5,
    "rpcs": 100,
    "load_avg": 0.5,
}


def test_median_of_takes_medians_and_the_worst_rss() -> None:
    runs = [
        {**RUN, "upload_mb_s": 100.0, "upload_rss_growth_mb": 90.0},
        {**RUN, "upload_mb_s": 300.0},
        dict(RUN),
    ]
    result = bench.median_of(runs)
    assert result["upload_mb_s"] == 150.0
    assert result["upload_rss_growth_mb"] == 90.0
    assert result["runs"] == 3 and len(result["all_runs"]) == 3


def test_table_marks_targets() -> None:
    text = bench.table(bench.median_of([dict(RUN)]))
    assert "| upload 1,000 MB" in text
    assert ">= 200 MB/s: MISSED" in text and ">= 200 MB/s: met" in text
    assert "< 100 MB: met" in text
    assert "load average 0.5-0.5" in text


def test_compared_pairs_the_runs() -> None:
    base = bench.median_of([{**RUN, "upload_mb_s": 90.0}, {**RUN, "upload_mb_s": 80.0}])
    new = bench.median_of([{**RUN, "upload_mb_s": 180.0}, {**RUN, "upload_mb_s": 170.0}])
    text = bench.compared(new, base, bench.Path("/tmp/base"))
    assert "baseline /tmp/base" in text and "upload 85 MB/s" in text
    assert "90 vs 180, 80 vs 170" in text


def test_percentile() -> None:
    values = [float(v) for v in range(1, 101)]
    assert bench.percentile(values, 0.99) == 99.0
    assert bench.percentile(values, 0.5) == 50.0
