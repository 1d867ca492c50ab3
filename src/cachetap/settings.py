"""One typed settings object: TOML file, then CACHETAP_* environment, then explicit overrides.

Settings are loaded once at a process boundary (CLI command, Celery app) and passed in from there;
no module reads them from a global.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import tomllib
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from cachetap.core.refresh import RefreshPolicy, rules_from
from cachetap.core.config_text import describe_errors, env_value, parse_size, unknown_key_message

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
NODE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # safe in queue names, URLs and log lines

DEFAULT_EXTENSIONS = [
    # video and audio
    "mp4", "m4v", "mkv", "webm", "avi", "mov", "flv", "ts", "m4s", "mp3", "flac", "m4a",
    # disk images
    "iso", "img", "dmg", "qcow2", "vmdk", "vdi", "vhd", "vhdx", "wim",
    # archives
    "zip", "7z", "rar", "tar", "gz", "tgz", "bz2", "xz", "zst", "cab",
    # installers and packages
    "exe", "msi", "msu", "msp", "pkg", "deb", "rpm", "apk", "appx", "appxbundle", "msix", "esd",
    "psf", "bin", "pak", "vpk",
]
DEFAULT_CONTENT_TYPES = [
    "video/", "audio/", "application/octet-stream", "application/x-iso9660-image",
    "application/zip", "application/x-7z-compressed", "application/x-rar-compressed",
    "application/x-tar", "application/gzip", "application/x-xz", "application/zstd",
    "application/x-msdownload", "application/x-msi", "application/vnd.debian.binary-package",
    "application/x-rpm", "application/vnd.android.package-archive", "application/vnd.ms-cab-compressed",
]


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "cachetap"  # "~/.cache" stays as it is with no HOME: the writability check names it


class RefreshRuleSetting(BaseModel):
    """One freshness rule (first match wins), like a line of Squid's refresh_pattern."""
    model_config = ConfigDict(extra="forbid")

    host: str = Field("*", description="Host glob, e.g. *.steamcontent.com.")
    extensions: list[str] = Field([], description="File extensions (no dot); empty: any.")
    min_ttl: int = Field(0, ge=0, description="Seconds fresh at least when the origin states no lifetime.")
    max_ttl: int | None = Field(None, ge=0, description="Seconds fresh at most (unset: max_ttl).")
    ignore_cache_control: bool = Field(False, description="Ignore the origin's Cache-Control/Expires (immutable files).")


class CacheDirSetting(BaseModel):
    """One disk of a cache node (an entry of `cache_dirs`): a directory on its own filesystem."""
    model_config = ConfigDict(extra="forbid")

    path: Path = Field(description="Absolute path of the disk's directory (its mount point or a directory on it).")
    weight: float = Field(1.0, gt=0, description="Share of the objects placed here, relative to the other disks (e.g. its size in TB).")
    disk_quota: int = Field(0, ge=0, description="Bytes the objects on this disk may use at most; 0: no quota of its own.")
    min_free_bytes: int | None = Field(None, ge=0, description="Bytes to keep free on this disk; unset: min_free_bytes.")
    require_mount: bool = Field(False, description="Use the directory only while it is a mount point, so an unmounted disk is never filled through its empty mount point on the root filesystem.")

    @field_validator("disk_quota", "min_free_bytes", mode="before")
    @classmethod
    def _size_with_unit(cls, value: Any) -> Any:
        return None if value is None else parse_size(value)

    @field_validator("path")
    @classmethod
    def _absolute(cls, path: Path) -> Path:
        if not path.expanduser().is_absolute():
            raise ValueError(f"cache_dirs paths must be absolute, got {str(path)!r}: write it from / on")
        return Path(os.path.normpath(path.expanduser()))


class ConfigError(Exception):
    """Bad configuration: the message names the key and the reason, one per line."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CACHETAP_", extra="forbid", validate_default=True)

    # --- where things live -------------------------------------------------------------------
    cache_dir: Path = Field(default_factory=default_cache_dir,
                            description="Directory for the blob store, the embedded broker and catalog. Nothing is written outside it.")
    cache_dirs: list[CacheDirSetting] = Field([], description="The disks objects are stored on, without RAID: [{path = \"/srv/disk1\", weight = 4}, \"/srv/disk2\"]. Each object goes to one disk by hash of its key (weighted), skipping full or failed ones; a failed disk takes only its own objects out of service. Empty: objects live in cache_dir.")
    broker_url: str = Field("", description="Celery broker URL (redis://, amqp://). Empty: the embedded filesystem broker under cache_dir/broker.")
    result_backend: str = Field("", description="Celery result backend URL. Empty: the catalog database when database_url is set (so `cachetap status` on any node sees every node's results), else SQLite under cache_dir (db+sqlite).")
    database_url: str = Field("", description="Catalog database URL (SQLAlchemy): postgresql+psycopg://, mysql+pymysql://. Empty: SQLite under cache_dir.")
    broker_visibility_timeout: float = Field(3600, gt=0, le=86_400 * 7, description="Redis broker: seconds an unacknowledged task waits before it is re-delivered (a worker killed mid-task); a re-delivered download whose key is still being downloaded waits for it.")
    broker_polling_interval: float = Field(0.05, gt=0, le=10, description="Seconds between polls of the embedded filesystem broker.")
    run_as_user: str = Field("cachetap", description="Started as root, `cachetap run` runs its workers, beat and cache server as this user (created when missing) and the capture as this user with only CAP_NET_RAW and CAP_SYS_NICE; CLI commands run as root act as the owner of cache_dir. Empty or \"root\": stay root.")
    admin_token: str = Field("", description="Token for the console's admin API (write actions) and Flower's password (user admin). Empty: generated at first start, kept in the catalog so every node shares it, and written to cache_dir/admin_token (mode 0600); `cachetap config show --secrets` prints it. Set it here on every node or on none.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("WARNING", description="Log level of every cachetap process: WARNING keeps the logs to what needs attention; INFO adds what each process does (every task); DEBUG everything.")

    # --- capture ----------------------------------------------------------------------------
    interface: str | None = Field(None, description="Interface to sniff (mirror port or gateway). Unset: no live capture.")
    inject_interface: str | None = Field(None, description="Interface to inject redirects on. Unset: the capture interface.")
    mode: Literal["observe", "redirect"] = Field("observe", description="observe: count and cache, never inject. redirect: also answer ready keys with a 302.")
    http_ports: list[int] = Field([80, 8080], description="TCP destination ports carrying plain HTTP requests.")
    batch_size: int = Field(256, ge=1, le=100_000, description="Sightings per analyze task at most.")
    batch_interval: float = Field(0.25, gt=0, le=60, description="Seconds a sighting may wait before its batch is sent.")
    batch_buffer: int = Field(100_000, ge=1000, description="Sightings held while the broker is unreachable; older ones are dropped and counted.")
    batch_buffer_bytes: int = Field(64 << 20, ge=1 << 20, description="Bytes of sightings held while the broker is unreachable, at most (a client chooses how long its URL is); older ones are dropped and counted.")
    reassembly_flows: int = Field(10_000, ge=16, description="Flows with a split request head held for reassembly at most.")

    # --- which requests matter -----------------------------------------------------------------
    extensions: list[str] = Field(DEFAULT_EXTENSIONS, description="File extensions (no dot) of objects worth caching. Empty: any extension.")
    content_types: list[str] = Field(DEFAULT_CONTENT_TYPES, description="Content types (prefixes) worth caching, checked on the HEAD probe. Empty: any type.")
    host_allow: list[str] = Field([], description="Host globs to consider (empty: all hosts).")
    host_deny: list[str] = Field([], description="Host globs never considered; wins over host_allow.")
    client_subnets: list[IPNetwork] = Field([], description="Client networks in scope (empty: every client).")
    min_size: int = Field(1 << 20, ge=0, description="Smallest object in bytes worth caching.")
    max_size: int = Field(64 << 30, gt=0, description="Largest object in bytes to cache.")

    # --- keys and admission --------------------------------------------------------------------
    strip_query_params: dict[str, list[str]] = Field({}, description="Host glob -> query parameters dropped from the cache key (signed-URL tokens), like Squid's Store-ID.")
    admission_threshold: int = Field(1, ge=0, description="Cache an object once it was requested more than this many times within admission_window; 0 fetches on first sight.")
    admission_window: int = Field(86_400, gt=0, description="Seconds over which requests are counted for admission.")
    probe_timeout: float = Field(10.0, gt=0, le=300, description="Seconds for the HEAD probe of a candidate object.")
    claim_timeout: int = Field(600, gt=0, description="Seconds after which a probe or download claim whose worker vanished may be taken again.")
    trusted_networks: list[IPNetwork] = Field([], description="Destination networks trusted for any host (your CDN caches); other requests count only when their destination is among the host's DNS addresses.")
    fetch_allow_networks: list[IPNetwork] = Field([], description="Networks cachetap may probe and download from although they are loopback, link-local, private (10/8, 172.16/12, 192.168/16, fc00::/7), shared (100.64/10) or this machine's own: list your internal mirrors here. Empty: public addresses only.")
    resolve_overrides: dict[str, list[str]] = Field({}, description="host -> addresses used instead of DNS, for the poisoning check and for fetching.")

    # --- downloads -----------------------------------------------------------------------------
    download_split: int = Field(16, ge=1, le=64, description="Connections aria2 opens per download at most (aria2 --split).")
    download_connections_per_server: int = Field(4, ge=1, le=16, description="Connections per origin address and download (aria2 --max-connection-per-server, at most 16). Each of the host's DNS addresses is a mirror for aria2, so a CDN answering with four addresses still gets download_split connections in all, and no single server sees more than this many from us.")
    download_min_split_size: int = Field(1 << 20, ge=1 << 20, le=1 << 30, description="Bytes: aria2 splits a download only into ranges at least this big (aria2 --min-split-size, 1 MiB-1 GiB).")
    download_max_concurrent: int = Field(4, ge=1, le=64, description="Downloads aria2 runs at the same time; more wait in its queue (aria2 --max-concurrent-downloads).")
    download_retries: int = Field(5, ge=1, le=100, description="Tries per connection before aria2 gives a download up (aria2 --max-tries); the download task may retry later.")
    download_retry_wait: int = Field(1, ge=0, le=600, description="Seconds aria2 waits between tries (aria2 --retry-wait).")
    download_timeout: int = Field(60, ge=1, le=600, description="Seconds without data before aria2 drops a connection (aria2 --timeout).")
    download_lease: float = Field(30.0, gt=0, le=3600, description="Seconds a download claim stays held without a progress heartbeat (sent every second while data flows); a re-delivered download job takes over only after that, so two workers never download one key at once.")
    download_attempts: int = Field(6, ge=1, le=100, description="Attempts of the download task per job (each continues the temp file) before the key is marked failed with the last reason.")
    replay_dirs: list[Path] = Field([], description="Directories, besides cache_dir/uploads, from which the cachetap.capture.replay task may read capture files; any other path in a message is refused.")

    # --- cache server -----------------------------------------------------------------------
    serve_host: str = Field("0.0.0.0", description="Address the cache server listens on.")
    serve_port: int = Field(8642, ge=1, le=65535, description="TCP port of the cache server. Unprivileged and outside http_ports, so the capture never counts the cache's own traffic as origin requests.")
    serve_processes: int = Field(1, ge=1, le=64, description="Cache server worker processes (SO_REUSEPORT); one per core serves the most.")
    serve_max_connections: int = Field(10_000, ge=1, description="Connections one cache server process holds at most (also kept below its open-files limit, which it raises to the hard limit at start); more are refused at once.")
    serve_max_connections_per_address: int = Field(512, ge=1, description="Connections from one client address at most, per cache server process; high enough for a NAT or a LAN party behind one address.")
    public_url: str = Field("", description="Base URL clients are redirected to, e.g. http://10.0.0.5:8642. Empty: derived from serve_host and serve_port (a wildcard host becomes the address of the default-route interface).")

    # --- console -----------------------------------------------------------------------------
    console_host: str = Field("127.0.0.1", description="Address the operator console (dashboard and admin API) listens on. Loopback by default: reads there need no token; on any other address every request needs the admin token (Authorization: Bearer).")
    console_port: int = Field(8643, ge=1, le=65535, description="TCP port of the operator console.")

    access_log: str = Field("access.log", description="Access log in Squid's native format (one line per answer of the cache server and per 302 the capture injects), relative to cache_dir or absolute; \"off\" disables it. Reopened on SIGUSR1 (after logrotate moved it).")

    # --- redirect -----------------------------------------------------------------------------
    redirect_origin_interface: str | None = Field(None, description="Interface the RST towards the origin leaves by. Unset: the injection interface (inject_interface, else interface).")
    redirect_client_mac: str | None = Field(None, description="Destination MAC for 302s to clients (e.g. the gateway's MAC on an injection port outside the captured segment). Unset: the captured frame's source MAC.")
    redirect_origin_mac: str | None = Field(None, description="Destination MAC for RSTs towards origins (the next hop on redirect_origin_interface). Unset: the captured frame's destination MAC.")
    redirect_own_source_mac: bool = Field(True, description="Send injected frames from the injection interface's own MAC instead of the captured peer's, so a forged GET cannot make cachetap transmit frames with a source MAC of its choosing and switches never learn a client's or gateway's MAC on the injection port. Turn off only where the next hop drops frames from unknown MACs.")
    redirect_client_subnets: list[IPNetwork] = Field([], description="Clients that may be redirected (empty: every client in client_subnets). Lets you cache for everyone but redirect a pilot group first.")
    redirect_hosts: list[str] = Field([], description="Host globs that may be redirected (empty: every host that is cached).")
    index_reconcile_interval: float = Field(60.0, ge=1, le=86_400, description="Seconds between full reconciles of the capture's ready-key index with the catalog (broadcast events keep it current in between).")
    health_interval: float = Field(0.25, gt=0, le=10, description="Seconds between health checks of the cache server; one failure stops redirects until it answers again.")
    capture_realtime: bool = Field(True, description="Run the capture loop at real-time priority (SCHED_FIFO) when allowed, so the 302 beats the origin's answer on a busy machine.")

    # --- cluster ------------------------------------------------------------------------------
    node_name: str = Field("", description="This machine's name in the cluster (the node registry, its download queue download.<node_name>); letters, digits, '.', '_' and '-'. Empty: the host name.")
    node_heartbeat_interval: float = Field(5.0, ge=0.5, le=300, description="Seconds between heartbeats each long-running process writes to the node registry; a node unheard of for three intervals counts as gone (its share of new downloads moves to the others).")

    # --- housekeeping ---------------------------------------------------------------------------
    default_ttl: int = Field(7 * 86_400, ge=0, description="Seconds a stored object stays fresh when the origin gives no Cache-Control max-age, Expires or Last-Modified (big files are usually immutable).")
    max_ttl: int = Field(90 * 86_400, ge=0, description="Seconds a stored object stays fresh at most, whatever the origin says; then it is revalidated.")
    refresh_min: int = Field(86_400, ge=0, description="Seconds an object with one of `extensions` stays fresh at least when the origin gives no max-age or Expires (RFC 9111's heuristic would make a file modified an hour ago fresh for six minutes); 0: strict RFC 9111.")
    refresh_rules: list[RefreshRuleSetting] = Field([], description="Freshness rules by host glob and extension, first match wins, like Squid's refresh_pattern: [{host = \"*.cdn.example.com\", extensions = [\"zip\"], min_ttl = 2592000, ignore_cache_control = true}]. URLs no rule matches get refresh_min.")
    revalidate_lease: int = Field(60, ge=1, le=3600, description="Seconds one revalidation of a requested expired object may take before another worker may try it again (one conditional request per key at a time).")
    revalidate_interval: int = Field(600, ge=10, description="Seconds between revalidation runs (conditional HEAD of entries past their freshness).")
    revalidate_batch: int = Field(200, ge=1, le=100_000, description="Entries revalidated per run at most (the oldest expiries first).")
    cleanup_min_hits: int = Field(3, ge=0, description="Cleanup removes entries with fewer than this many hits that were idle for cleanup_idle seconds; 0 disables it.")
    cleanup_idle: int = Field(7 * 86_400, gt=0, description="Seconds without a request after which a rarely requested entry is cleaned up.")
    disk_quota: int = Field(0, ge=0, description="Bytes the stored objects may use at most (sum of ready entries); eviction_policy chooses what goes. 0: no quota.")
    eviction_policy: Literal["lru", "gdsf", "s3fifo", "lrfu"] = Field("lrfu", description="Which stored objects go when space is needed: lru, gdsf, s3fifo or lrfu (LRFU behind a probation window; see `cachetap simulate` to compare them on your logs).")
    min_free_bytes: int = Field(1 << 30, ge=0, description="Bytes to keep free on the cache_dir filesystem; the quota pass evicts until they are.")
    reconcile_grace: int = Field(3600, ge=0, description="Seconds an unreferenced blob or an orphaned temp file is left alone before reconcile deletes it (a publish may be in flight).")
    beat_lease: float = Field(30.0, ge=1, le=3600, description="Seconds the active beat's lease in the catalog lasts; every node may run a beat, only the holder sends, renewing every third of this. A holder that dies is replaced within 4/3 of it (nodes' clocks must agree to well within it: NTP).")
    housekeeping_interval: int = Field(900, ge=10, description="Seconds between runs of the cleanup, quota and reconcile passes.")

    @field_validator("redirect_client_mac", "redirect_origin_mac")
    @classmethod
    def _mac_valid(cls, mac: str | None) -> str | None:
        if mac is not None:
            parts = mac.replace("-", ":").split(":")
            if len(parts) != 6 or not all(len(p) == 2 and all(c in "0123456789abcdefABCDEF" for c in p) for p in parts):
                raise ValueError(f"not a MAC address (aa:bb:cc:dd:ee:ff): {mac!r}")
        return mac

    @field_validator("min_size", "max_size", "disk_quota", "min_free_bytes", "download_min_split_size", mode="before")
    @classmethod
    def _size_with_unit(cls, value: Any) -> Any:
        return parse_size(value)

    @field_validator("cache_dirs", mode="before")
    @classmethod
    def _plain_paths(cls, dirs: Any) -> Any:
        if isinstance(dirs, list):  # a bare path is a disk of weight 1
            return [{"path": d} if isinstance(d, (str, Path)) else d for d in dirs]
        return dirs

    @field_validator("cache_dirs")
    @classmethod
    def _disks_apart(cls, dirs: list[CacheDirSetting]) -> list[CacheDirSetting]:
        paths = [d.path for d in dirs]
        for i, a in enumerate(paths):
            for b in paths[i + 1:]:
                if a == b:
                    raise ValueError(f"{a} is listed twice: list each disk once (give it a larger weight instead)")
                if a in b.parents or b in a.parents:
                    raise ValueError(f"{a} and {b} are nested: give each disk a directory of its own, side by side")
        return dirs

    @field_validator("http_ports")
    @classmethod
    def _ports_valid(cls, ports: list[int]) -> list[int]:
        bad = [p for p in ports if not 0 < p < 65536]
        if bad or not ports:
            raise ValueError(f"ports must be 1-65535 and at least one is needed, got {ports}")
        return ports

    @field_validator("extensions")
    @classmethod
    def _normalise_extensions(cls, exts: list[str]) -> list[str]:
        return sorted({e.lower().lstrip(".") for e in exts if e.strip(". ")})

    @field_validator("resolve_overrides")
    @classmethod
    def _addresses_valid(cls, overrides: dict[str, list[str]]) -> dict[str, list[str]]:
        for host, addrs in overrides.items():
            for a in addrs:
                ipaddress.ip_address(a)  # raises ValueError naming the address
        return {h.lower().rstrip("."): a for h, a in overrides.items()}

    @model_validator(mode="after")
    def _serve_port_not_captured(self) -> Settings:
        # Requests to the cache would be sniffed, counted and cached again: a loop.
        if self.serve_port in self.http_ports:
            raise ValueError(f"serve_port ({self.serve_port}) is one of http_ports {self.http_ports}")
        return self

    @field_validator("admin_token")
    @classmethod
    def _admin_token_strong(cls, token: str) -> str:
        if token and (len(token) < 16 or not token.isprintable() or any(c.isspace() for c in token)):
            raise ValueError("admin_token must be at least 16 printable characters without spaces "
                             "(or empty to have one generated)")
        return token

    @field_validator("public_url")
    @classmethod
    def _public_url_valid(cls, url: str) -> str:
        if url and (urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname):
            raise ValueError(f"public_url must be an http:// or https:// URL with a host, got {url!r}")
        return url.rstrip("/")

    @field_validator("node_name")
    @classmethod
    def _node_name_valid(cls, name: str) -> str:
        if name and not NODE_NAME.fullmatch(name):
            raise ValueError(f"node_name must be 1-64 letters, digits, '.', '_' or '-', got {name!r}")
        return name

    @model_validator(mode="after")
    def _sizes_ordered(self) -> Settings:
        if self.min_size > self.max_size:
            raise ValueError(f"min_size ({self.min_size}) is larger than max_size ({self.max_size})")
        return self

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource) -> tuple[PydanticBaseSettingsSource, ...]:
        # load_settings merges file and CACHETAP_* environment itself, remembering where each value
        # came from, so that an error can name the file or the variable that held it.
        return (init_settings,)

    # --- derived values -----------------------------------------------------------------------
    def refresh_policy(self) -> RefreshPolicy:
        return RefreshPolicy(rules=rules_from(r.model_dump() for r in self.refresh_rules),
                             default_min_ttl=self.refresh_min, big_extensions=frozenset(self.extensions),
                             default_ttl=self.default_ttl, max_ttl=self.max_ttl)

    @property
    def access_log_path(self) -> Path | None:
        if self.access_log.strip().lower() in ("", "off", "none", "false"):
            return None
        return self.cache_dir / self.access_log  # an absolute path stays as it is

    @property
    def disks(self) -> list[CacheDirSetting]:
        """The disks objects are stored on: `cache_dirs`, else cache_dir alone."""
        return list(self.cache_dirs) or [CacheDirSetting.model_construct(path=self.cache_dir)]

    @property
    def effective_broker_url(self) -> str:
        return self.broker_url or "filesystem://"

    @property
    def effective_result_backend(self) -> str:
        if self.result_backend:
            return self.result_backend
        if self.database_url:  # shared by every node, like the catalog itself
            return f"db+{self.database_url}"
        return f"db+sqlite:///{self.cache_dir / 'celery-results.sqlite'}"

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.cache_dir / 'catalog.sqlite'}"

    @property
    def effective_node_name(self) -> str:
        """The node's name: `node_name`, else the host name cut to a valid name."""
        if self.node_name:
            return self.node_name
        host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:64]
        return host or "localhost"

    @property
    def broker_dir(self) -> Path:
        return self.cache_dir / "broker"

    @property
    def embedded_broker(self) -> bool:
        return not self.broker_url

    def masked(self, secrets: bool = False) -> dict[str, Any]:
        """Effective settings for display, with passwords in URLs and the admin token masked unless
        `secrets` (`config show --secrets`)."""
        data = self.model_dump(mode="json")
        hide = (lambda url: url) if secrets else mask_url
        data["broker_url"] = hide(self.effective_broker_url)
        data["result_backend"] = hide(self.effective_result_backend)
        data["database_url"] = hide(self.effective_database_url)
        if not secrets and self.admin_token:
            data["admin_token"] = "***"
        return data


def mask_url(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:
        return "***"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[1]}"))


def config_path_from_env() -> Path | None:
    value = os.environ.get("CACHETAP_CONFIG")
    return Path(value) if value else None


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Load settings from a TOML file (optional), the CACHETAP_* environment (which wins) and
    explicit overrides.

    Raises ConfigError naming each bad key, the file or variable that held it, and why.
    """
    config_file = config_file or config_path_from_env()
    fields = Settings.model_fields
    values: dict[str, Any] = {}
    origin_of: dict[str, str] = {}
    problems: list[str] = []
    if config_file is not None:
        try:
            with open(config_file, "rb") as fh:
                file_values = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file {config_file}: not found") from None
        except IsADirectoryError:
            raise ConfigError(f"config file {config_file}: is a directory, not a TOML file") from None
        except PermissionError:
            raise ConfigError(f"config file {config_file}: not readable by this user") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {config_file}: not valid TOML: {exc}") from None
        # A [cachetap] table is accepted as well as top-level keys.
        file_values = file_values.get("cachetap", file_values)
        for key, value in file_values.items():
            if key not in fields:
                problems.append(unknown_key_message(key, fields, str(config_file)))
            else:
                values[key], origin_of[key] = value, str(config_file)
    for var in sorted(os.environ):
        if not var.startswith("CACHETAP_") or var == "CACHETAP_CONFIG":
            continue
        key = var[len("CACHETAP_"):].lower()
        if key not in fields:
            problems.append(unknown_key_message(key, fields, var, env=True))
            continue
        try:
            values[key] = env_value(os.environ[var], _kind(fields[key].annotation))
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            problems.append(f"{var}: {key} = {os.environ[var]!r}: {exc}")
            continue
        origin_of[key] = var
    if problems:
        raise ConfigError("\n".join(problems))
    for key in overrides:
        origin_of.setdefault(key, "override")
    try:
        return Settings(**{**values, **overrides})
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc.errors(), origin_of)) from None


def _kind(annotation: Any) -> str:
    text = str(annotation)
    return "list" if text.startswith("list") else "dict" if text.startswith("dict") else "scalar"


def field_help() -> dict[str, str]:
    """Each setting's help text (for `cachetap config show`)."""
    return {name: field.description or "" for name, field in Settings.model_fields.items()}
