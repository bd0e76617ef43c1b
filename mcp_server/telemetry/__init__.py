"""What operators see: Prometheus metrics, OpenTelemetry traces, structured logs.

All of it is fed by the task events the engine emits (through an EventListener), by sampling
the orchestrator's state, and by timing the store, so the engine itself knows nothing of it.
"""
