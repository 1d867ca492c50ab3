"""A host whose name resolves to several addresses: the download splits its connections over all of
them with at most `download_connections_per_server` on each, so no server of a CDN sees more from us
while the whole download keeps its 16 connections. Real aria2c on default settings, a real origin
listening on four loopback addresses, the name resolved by the cache's own resolver."""

from __future__ import annotations

import threading
from collections import Counter

import psutil

from cachetap.core.keys import cache_key
from cachetap.fetch.aria2 import Aria2Daemon, Aria2Options
from cachetap.fetch.download import download
from cachetap.fetch.probe import probe
from cachetap.fetch.resolver import Resolver
from cachetap.settings import load_settings
from cachetap.store.blobs import BlobStore
from cachetap.tasks.download import _pinned
from cachetap.testing import LOOPBACK_NETWORKS
from cachetap.testing.origin import Origin, Resource
from cachetap.wire import DownloadJob

MIB = 1 << 20
ADDRESSES = ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5")


def test_connections_spread_over_every_address_with_at_most_the_limit_on_each(tmp_path):
    settings = load_settings(cache_dir=tmp_path / "cache", fetch_allow_networks=LOOPBACK_NETWORKS,
                             resolve_overrides={"mirrors.test": list(ADDRESSES)})
    options = Aria2Options.from_settings(settings)
    per_address = settings.download_connections_per_server
    assert (options.split, per_address) == (16, 4)  # the defaults under test
    resolver = Resolver.from_settings(settings)
    with Origin(addresses=ADDRESSES) as origin, Aria2Daemon(tmp_path / "aria2", options) as daemon:
        # Paced per connection, so the connections overlap long enough to be counted.
        origin.add("/big.iso", Resource(size=48 * MIB, rate=4_000_000))
        port = origin.port
        url = f"http://mirrors.test:{port}/big.iso"
        job = DownloadJob.from_probe(cache_key(url, {}), url, probe(url, resolver, 30), "claim")
        message = _pinned(job, resolver)
        assert message["addresses"] == list(ADDRESSES)
        with ConnectionWatch(daemon.pid, port) as watch:
            got = download(message, daemon, BlobStore(settings.cache_dir), options)
    assert got.digest == origin.expected_digest("/big.iso")
    peaks = {address: watch.peaks[address] for address in ADDRESSES}
    print(f"most connections aria2c held open at once, per address: {peaks}; in all: {watch.total_peak}")
    assert all(1 <= peak <= per_address for peak in peaks.values()), peaks
    assert watch.total_peak > per_address, peaks  # more than one address's share at once
    assert set(origin.stats("/big.iso").hosts) == {f"mirrors.test:{port}"}  # the real name, always


class ConnectionWatch:
    """Samples aria2c's established connections to the origin's port (what the client holds open;
    an origin thread notices a closed connection only at its next write, so the origin's count lags)."""

    def __init__(self, pid: int, port: int) -> None:
        self.process, self.port = psutil.Process(pid), port
        self.peaks: Counter[str] = Counter()
        self.total_peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            now = Counter(c.raddr.ip for c in self.process.net_connections(kind="tcp")
                          if c.raddr and c.raddr.port == self.port and c.status == psutil.CONN_ESTABLISHED)
            self.total_peak = max(self.total_peak, sum(now.values()))
            for address, count in now.items():
                self.peaks[address] = max(self.peaks[address], count)

    def __enter__(self) -> ConnectionWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
