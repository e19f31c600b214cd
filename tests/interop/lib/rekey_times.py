#!/usr/bin/env python3
"""Durations of CHILD_SA rekeys an initiator ran, from its charon log (filelog with
time_precision = ms): from `generating CREATE_CHILD_SA request ... N(REKEY_SA)` to the next
`CHILD_SA ... established`. Prints count, median, p90 and max in ms.

  rekey_times.py LOG
"""
import re
import statistics
import sys
from datetime import datetime

STAMP = re.compile(r"^(\w{3} +\d+ \d\d:\d\d:\d\d\.\d{3}) ")


def stamp(line):
    m = STAMP.match(line)
    return datetime.strptime(m.group(1), "%b %d %H:%M:%S.%f") if m else None


def durations(path):
    out, started = [], None
    with open(path, errors="replace") as log:
        for line in log:
            if "generating CREATE_CHILD_SA request" in line and "N(REKEY_SA)" in line:
                started = stamp(line)
            elif started and re.search(r"CHILD_SA \S+ established", line):
                end = stamp(line)
                if end:
                    out.append((end - started).total_seconds() * 1000)
                started = None
    return out


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    times = sorted(durations(sys.argv[1]))
    if not times:
        print("no timed rekeys found (is time_precision = ms set?)")
        return 1
    p90 = times[min(len(times) - 1, round(0.9 * (len(times) - 1)))]
    print(f"{len(times)} rekeys: median {statistics.median(times):.1f} ms, p90 {p90:.1f} ms, max {times[-1]:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
