"""Spotting kernel trouble in a dmesg dump; shared by the VM harness and the kernel tests."""
import re

# A line naming any of these means the kernel complained: WARN_ON and BUG_ON
# splats, oopses, KASAN reports, kmemleak, refcount over/underflow, list
# debugging. Whole words for the shouting ones, so "DEBUG" is not a "BUG".
BAD = re.compile(r"\b(BUG|WARNING|Oops|KASAN)\b|leak|refcount_t|list_del corruption|Call Trace:")


def bad_lines(text: str) -> list[str]:
    """The lines of a kernel log that report a problem, whole."""
    return [line for line in text.splitlines() if BAD.search(line)]
