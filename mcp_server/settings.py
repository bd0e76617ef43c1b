"""Server configuration: typed, frozen, built once from flags and environment variables.

Every knob has a default that runs on a bare machine: the embedded SQLite store, loopback
address, and limits sized for a small server.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field, fields, replace
from typing import Any

from mcp_sdk.serving import DEFAULT_MAX_PENDING_CALLS


@dataclass(frozen=True)
class Limits:
    """Bounds on what one request or one run may use. Every one is configurable."""

    max_message_bytes: int = 4 * 1024 * 1024
    max_input_bytes: int = 1024 * 1024
    # how deeply objects and lists may nest in any value that enters: a task's input, a plugin's
    # output, a CEL result. Kept well inside protobuf's parse limit, so every stored task reads back.
    max_value_depth: int = 32
    # a value (an input, an output, a result) above this size is returned by reference in
    # responses and read with ReadValue; one above max_value_bytes fails its step
    inline_value_bytes: int = 64 * 1024
    max_value_bytes: int = 16 * 1024 * 1024
    # a stored value of this size or more is stored in chunks, so that values that share most of
    # their bytes (a conversation that grows by a turn) share storage (engine/value_chunks.py);
    # 0: every value whole (for a rolling upgrade from a server older than chunks), else >= 64 KiB
    chunked_value_bytes: int = 64 * 1024
    max_workflow_nodes: int = 500
    # the objects and lists one JSON Schema may hold (a wait's, a workflow's input or output
    # schema): checking that it is one takes about 0.4 ms of CPU per part, on every replica
    max_schema_parts: int = 5_000
    max_workflow_depth: int = 16
    max_rounds: int = 10
    max_transitions: int = 100
    max_map_items: int = 10_000
    max_concurrency: int = 256
    max_expression_length: int = 2048
    # comprehensions (map, filter, all, exists, exists_one) per CEL expression: evaluation cost
    # grows with the input size to the power of how deeply they nest
    max_expression_comprehensions: int = 3
    # the work an evaluation with comprehensions or a chain of + may do (engine/cel_cost.py):
    # 1,000 items for one map or two nested exists, 100 for a map in a map (the CEL evaluator
    # holds the event loop: ~0.4 s for the costliest shape at the limit); 0: no budget
    max_cel_cost: float = 1_000_000
    # 0: this replica serves the API and runs no task (others on the same store do)
    max_tasks_in_flight: int = 1000
    max_queue_length: int = 100_000
    # tasks one owner (the principal that submitted them) may have queued: past it that owner's
    # submissions are refused (OWNER_QUEUE_FULL) while others' are still taken, so one tenant's
    # backlog cannot fill the queue for everyone; 0: no limit but max_queue_length
    max_queued_per_owner: int = 50_000
    # and the bytes their submissions stored (each task's input, labels and ids, its large input
    # beside it): 50,000 tasks of 1 MB would be 50 GB of one owner's in the store; 0: no limit
    max_queued_bytes_per_owner: int = 1024 * 1024 * 1024
    max_watchers_per_task: int = 1000
    # signals a task may receive in all (taken or kept): a task's signal log is stored with it
    max_signals_per_task: int = 10_000
    # and their payloads' bytes in all (each may be max_input_bytes): 10,000 of 1 MB would be 10 GB
    # in one task; 0: no limit
    max_signal_bytes_per_task: int = 64 * 1024 * 1024
    # PROGRESS events a step's attempt may add to its task's log, and their bytes: past either,
    # the attempt's further progress is not recorded (one event says so); its output still is
    max_progress_per_attempt: int = 10_000
    max_progress_bytes_per_attempt: int = 16 * 1024 * 1024
    # one event (a progress message and its data, a supervisor's feedback): past it the message is
    # clipped and the largest data fields left out, named in the event. Also what one batched watch
    # message carries (WatchTaskEvents, SubmitAndWatchTask); at most half of max_message_bytes
    max_event_bytes: int = 1024 * 1024
    max_page_size: int = 1000
    # one protocol's manifest as a plugin describes it (its schemas, mostly): every listing and
    # GetProtocol carries it whole
    max_manifest_bytes: int = 256 * 1024
    # distinct usage names a task's total keeps (each call reports at most 64): the total is part
    # of the task's header, rewritten with every checkpoint and sent with every view of the task
    max_usage_names_per_task: int = 256
    # task submissions per principal per second (a token bucket with a burst of twice that); 0: no limit
    submissions_per_second: float = 0.0
    # workflows whose triggers may take one event name: a publish starts a task of each (at once,
    # but each is a submission), so a name taken by thousands would make every publish of it slow
    max_workflows_per_event: int = 100
    # the longest `lookback` a wait may have (0: none may). Only events of a name some workflow
    # version waits for with a lookback are kept, for the longest such lookback: each holds its data
    # (events over MAX_KEPT_EVENT_BYTES are not kept), at most 100 per event name and key
    event_lookback_seconds: float = 3600.0
    # kept events of one name keep at most this many keys (those published to least recently are
    # dropped first), so a lookback over a name with endless keys is bounded: keys x 100 events
    max_kept_keys_per_event: int = 1000
    # how long a cancelled task's clean-up (recover nodes with on_cancel) may run, from its cancel:
    # past it the handlers still running are cancelled and the task ends CANCELLED all the same
    cancel_cleanup_seconds: float = 300.0


@dataclass(frozen=True)
class Settings:
    """Everything the orchestrator needs to start."""

    listen: str = "127.0.0.1:50051"
    store_url: str = "sqlite:///.mcp/mcp.db"
    plugins: tuple[str, ...] = ()
    bundled_plugins: bool = False
    # the plugins this server registers for itself (bundled ones, --plugin addresses) are registered
    # with this TTL and renewed while it lives, so they expire if it dies (protocols/upkeep.py)
    plugin_ttl_seconds: float = 30.0
    # every registered instance is asked Describe this often (0: never), so a dead one is known
    # before a call finds it; one with a TTL unreachable this long is dropped (0: never)
    health_probe_seconds: float = 10.0
    drop_unreachable_seconds: float = 120.0
    replica_id: str = field(default_factory=lambda: f"replica-{os.getpid()}")
    lease_seconds: float = 15.0
    # a start (of a task or a step) is written with the next write, or on its own this long after:
    # a step that ends sooner costs one write, not two; watchers see a start at most this late
    start_write_delay: float = 0.02
    # a batched watch (WatchTaskEvents, SubmitAndWatchTask) holds events that are not the task's
    # end this long for those that follow, to send them in one message; 0: each as it is ready
    watch_batch_delay: float = 0.01
    # a wait, sleep or retry backoff due within this many seconds waits in memory, holding its run
    # slot; a longer one (and a wait for a signal without a deadline) parks its task when all of it waits
    wait_in_memory_seconds: float = 2.0
    # a signal sent through another replica reaches the run holding its task by a Redis pub/sub
    # nudge at once; this poll is what catches a nudge that was lost (a dropped connection)
    signal_poll_seconds: float = 0.2
    # a cancel request left through another replica reaches the replica running its task by a
    # Redis pub/sub nudge at once; this poll is what catches a nudge that was lost
    cancel_poll_seconds: float = 0.5
    default_step_timeout: float = 60.0
    default_task_timeout: float = 3600.0
    shutdown_grace: float = 10.0
    # finished tasks and their event logs are deleted this long after they end
    retention_seconds: float = 7 * 24 * 3600.0
    breaker_failure_threshold: int = 5
    breaker_reset_seconds: float = 30.0
    # outlier ejection of one plugin instance among several (see protocols/outliers.py)
    outlier_consecutive_failures: int = 3
    outlier_ejection_seconds: float = 10.0
    outlier_recent_failure_seconds: float = 2.0
    # while no call waits for capacity, a finished call's grant is kept this long for the next
    # call on this replica (no store round trip); 0: every call asks the shared ledger
    capacity_keep_seconds: float = 0.25
    # while no call waits for capacity, a replica asks the ledger for up to this many units of a
    # call's needs at once (a slice, one round trip) and serves its next calls from it; 1: a unit per ask
    capacity_slice_units: int = 8
    # bulk actions (StartBulkAction) a principal may have running at once
    bulk_max_running: int = 4
    # plain plugin calls travel over one ExecuteMany stream per plugin instance (plugins without
    # it are called with Execute); false: every call is an Execute call of its own
    plugin_call_streams: bool = True
    # "protocol=N" entries: at most N calls in flight to that protocol (overrides its manifest)
    protocol_concurrency: tuple[str, ...] = ()
    # TLS for the server: certificate and key (PEM); with a client CA, clients must present a
    # certificate it signed (mTLS).
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    # TLS for calls to plugins: the CA that signed their certificates; with a client
    # certificate and key, the orchestrator authenticates itself to them (mTLS).
    plugin_tls_ca: str = ""
    plugin_tls_cert: str = ""
    plugin_tls_key: str = ""
    # Principals file (YAML or JSON); empty: no authentication.
    auth_file: str = ""
    # Prometheus /metrics on this port (0: off), traces ("" off, "console"), logs ("text" or "json")
    metrics_port: int = 0
    metrics_address: str = "127.0.0.1"
    # how often gauges that need a store read (queue depth, capacity in use) are refreshed
    metrics_sample_seconds: float = 5.0
    tracing: str = ""
    log_format: str = "text"
    # the objects that exist once the server process has started (modules, plans, channels) are
    # frozen out of the way of Python's cycle collector: a full collection then walks only what
    # came after (see api/server.py tune_collector)
    gc_freeze: bool = True
    # the server process's event loop: "uvloop" (libuv's, when installed: ~8% fewer instructions
    # per task, see docs/performance.md) or "asyncio" (the standard library's)
    event_loop: str = "uvloop"
    # calls received but not yet taken up by the server's event loop, before gRPC starts shedding
    # them at random (up to twice this, all are shed); a shed call ends CANCELLED with no details,
    # so the limit sits well above any burst the process can absorb (gRPC's own default is 1,000)
    max_pending_calls: int = DEFAULT_MAX_PENDING_CALLS
    # the web console on this HOST:PORT ("" off); it calls this server's API like any client, over
    # TLS (trusting console_tls_ca, or the server's own certificate) when the server serves TLS
    console_listen: str = ""
    console_tls_ca: str = ""
    # server processes on the listen address (SO_REUSEPORT), each a replica on the same store, under
    # one parent that restarts a child that dies (see processes.py); `auto`: one per core. Redis only.
    processes: int = 1
    # let other processes listen on the same address (set by the parent for its children)
    reuse_port: bool = False
    limits: Limits = field(default_factory=Limits)

    def concurrency_overrides(self) -> dict[str, int]:
        overrides = {}
        for entry in self.protocol_concurrency:
            name, _, value = entry.partition("=")
            if not name or not value.isdigit():
                raise ValueError(f"protocol_concurrency entry {entry!r} must look like name=N")
            overrides[name] = int(value)
        return overrides


_ENV_PREFIX = "MCP_"


# Numbers that must be above zero; every other number must not be negative.
POSITIVE = frozenset(
    {
        "processes",
        "lease_seconds",
        "signal_poll_seconds",
        "cancel_poll_seconds",
        "plugin_ttl_seconds",
        "default_step_timeout",
        "default_task_timeout",
        "retention_seconds",
        "breaker_failure_threshold",
        "breaker_reset_seconds",
        "outlier_consecutive_failures",
        "outlier_ejection_seconds",
        "metrics_sample_seconds",
        "max_pending_calls",
        "capacity_slice_units",
        "bulk_max_running",
    }
)


# Limits that may be 0: no submission rate limit; a replica that serves the API and runs no task;
# no CEL cost budget; no cap on a task's signal bytes; no share of the queue per owner (tasks, bytes);
# every value stored whole.
ZERO_ALLOWED_LIMITS = frozenset(
    {
        "submissions_per_second",
        "max_tasks_in_flight",
        "max_cel_cost",
        "max_signal_bytes_per_task",
        "max_queued_per_owner",
        "max_queued_bytes_per_owner",
        "event_lookback_seconds",
        "chunked_value_bytes",
    }
)


EVENT_LOOPS = ("uvloop", "asyncio")


class SettingsError(ValueError):
    """A setting that cannot be used; the message names the variable or flag and says why."""


def _coerce(key: str, value: str, default: Any) -> Any:
    if isinstance(default, bool):
        return value.lower() in {"1", "true", "yes", "on"}
    try:
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
    except ValueError:
        kind = "a whole number" if isinstance(default, int) else "a number"
        raise SettingsError(f"{key}={value!r}: must be {kind}") from None
    if isinstance(default, tuple):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    return value


def _process_count(key: str, value: str) -> int:
    """`auto`: the cores this process may run on; else a whole number."""
    if value.strip().lower() == "auto":
        return len(os.sched_getaffinity(0))
    count = _coerce(key, value, 1)
    assert isinstance(count, int)
    return count


MIN_EVENT_BYTES = 64 * 1024
MIN_CHUNKED_VALUE_BYTES = 64 * 1024


def problems(settings: Settings) -> list[str]:
    """What is wrong with `settings`, a line per setting, each named as its environment variable."""
    found = []
    for f in fields(Limits):
        value = getattr(settings.limits, f.name)
        if value < 0 or (value == 0 and f.name not in ZERO_ALLOWED_LIMITS):
            floor = "must not be negative" if f.name in ZERO_ALLOWED_LIMITS else "must be above zero"
            found.append(f"{_ENV_PREFIX}LIMIT_{f.name.upper()}={value}: {floor}")
    for f in fields(Settings):
        value = getattr(settings, f.name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if f.name in POSITIVE and value <= 0:
            found.append(f"{_ENV_PREFIX}{f.name.upper()}={value}: must be above zero")
        elif value < 0:
            found.append(f"{_ENV_PREFIX}{f.name.upper()}={value}: must not be negative")
    if settings.limits.max_event_bytes < MIN_EVENT_BYTES:
        found.append(
            f"{_ENV_PREFIX}LIMIT_MAX_EVENT_BYTES={settings.limits.max_event_bytes}: must be at least {MIN_EVENT_BYTES}"
            " (an event's clipped message and the names of the fields it left out)"
        )
    if 0 < settings.limits.chunked_value_bytes < MIN_CHUNKED_VALUE_BYTES:
        found.append(
            f"{_ENV_PREFIX}LIMIT_CHUNKED_VALUE_BYTES={settings.limits.chunked_value_bytes}: must be 0 (values"
            f" whole) or at least {MIN_CHUNKED_VALUE_BYTES}"
        )
    if settings.limits.max_event_bytes * 2 > settings.limits.max_message_bytes:
        found.append(
            f"{_ENV_PREFIX}LIMIT_MAX_EVENT_BYTES={settings.limits.max_event_bytes}: must be at most half of"
            f" {_ENV_PREFIX}LIMIT_MAX_MESSAGE_BYTES ({settings.limits.max_message_bytes})"
        )
    if settings.event_loop not in EVENT_LOOPS:
        found.append(f"{_ENV_PREFIX}EVENT_LOOP={settings.event_loop!r}: must be one of {', '.join(EVENT_LOOPS)}")
    if not 0 <= settings.metrics_port <= 65535:
        found.append(f"{_ENV_PREFIX}METRICS_PORT={settings.metrics_port}: must be a port (0: off)")
    try:
        settings.concurrency_overrides()
    except ValueError as exc:
        found.append(f"{_ENV_PREFIX}PROTOCOL_CONCURRENCY: {exc}")
    return found


def limits_from_env(env: dict[str, str]) -> Limits:
    """Read `MCP_LIMIT_<NAME>` variables, e.g. MCP_LIMIT_MAX_INPUT_BYTES=65536."""
    base = Limits()
    changes = {
        f.name: _coerce(key, env[key], getattr(base, f.name))
        for f in fields(Limits)
        if (key := f"{_ENV_PREFIX}LIMIT_{f.name.upper()}") in env
    }
    return replace(base, **changes)


def settings_from(argv: list[str] | None = None, env: dict[str, str] | None = None) -> Settings:
    """Build settings from defaults, then `MCP_*` environment variables, then flags; raise
    SettingsError naming every setting that cannot be used (a word for a number, a negative
    duration, a zero lease)."""
    env = dict(os.environ if env is None else env)
    base = Settings()
    values: dict[str, Any] = {}
    for f in fields(Settings):
        key = f"{_ENV_PREFIX}{f.name.upper()}"
        if f.name == "processes" and key in env:
            values[f.name] = _process_count(key, env[key])
        elif f.name != "limits" and key in env:
            values[f.name] = _coerce(key, env[key], getattr(base, f.name))
    parser = argparse.ArgumentParser(prog="mcp-server", description="Run the mCP orchestrator.")
    parser.add_argument("--listen", help=f"address to serve on (default {base.listen})")
    parser.add_argument("--store", dest="store_url", help="sqlite:///PATH or redis://HOST:PORT/DB")
    parser.add_argument("--plugin", dest="plugins", action="append", help="plugin address to register")
    parser.add_argument("--bundled-plugins", action="store_true", default=None, help="start the bundled plugins")
    parser.add_argument("--replica-id", help="name of this replica in leases")
    parser.add_argument("--tls-cert", help="server certificate (PEM)")
    parser.add_argument("--tls-key", help="server private key (PEM)")
    parser.add_argument("--tls-client-ca", help="CA of client certificates: turns on mTLS")
    parser.add_argument("--plugin-tls-ca", help="CA of plugin certificates: call plugins over TLS")
    parser.add_argument("--auth-file", help="principals file: turns on bearer-token authentication")
    parser.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    parser.add_argument("--tracing", choices=["", "console"], help="export OpenTelemetry spans")
    parser.add_argument("--log-format", choices=["text", "json"])
    parser.add_argument("--console-listen", help="serve the web console on HOST:PORT (e.g. 127.0.0.1:8080)")
    parser.add_argument(
        "--processes", help="server processes on the listen address, or `auto` (one per core); Redis only"
    )
    args = parser.parse_args(argv or [])
    for name, value in vars(args).items():
        if name == "processes" and value is not None:
            values[name] = _process_count("--processes", value)
        elif value is not None:
            values[name] = tuple(value) if name == "plugins" else value
    settings = replace(base, limits=limits_from_env(env), **values)
    if found := problems(settings):
        raise SettingsError("; ".join(found))
    return settings
