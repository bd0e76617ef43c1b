"""mCP Server: an orchestration engine for cognitive workflows, served over gRPC."""

__version__ = "0.1.0"
