"""A scraper in its own process, as Prometheus is: GETs a URL back to back (at least once) and prints
each latency (seconds), one per line. ``python -m benchmarks.scraper URL SECONDS [gzip]``.

The render benchmark runs its scrapers this way so that only the exporter's own work (the HTTP
threads writing the snapshot) competes with the poller for the interpreter lock.
"""

from __future__ import annotations

import sys
import time

import httpx


def main(argv: list[str]) -> int:
    url, seconds = argv[0], float(argv[1])
    headers = {"Accept-Encoding": "gzip"} if argv[2:] == ["gzip"] else {"Accept-Encoding": "identity"}
    until = time.monotonic() + seconds
    with httpx.Client(timeout=60) as http:
        while True:  # at least one scrape
            started = time.perf_counter()
            # The body as sent (not decompressed: the scraper's own CPU is not the exporter's cost).
            with http.stream("GET", url, headers=headers) as resp:
                resp.raise_for_status()
                for _ in resp.iter_raw(1 << 20):
                    pass
            print(f"{time.perf_counter() - started:.6f}", flush=True)
            if time.monotonic() >= until:
                break
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
