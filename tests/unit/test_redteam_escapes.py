"""Reading what the isolation probes printed (sandbox.redteam.escapes)."""

from sandbox.redteam.escapes import fork_counts


def test_fork_counts_take_whole_lines_only() -> None:
    # gVisor tears the sandbox down at the pids limit and can cut the last line short.
    assert fork_counts("forked 1\nforked 2\nforked") == [1, 2]
    assert fork_counts("forked 1\nforked 2\nstopped 2 BlockingIOError\n") == [1, 2]
    assert fork_counts("forked 12x\nforked\n") == []
    assert fork_counts("") == []
