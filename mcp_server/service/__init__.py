"""What the server does for each family of RPCs, independent of how requests arrive: the gRPC
servicers in `api/` unpack a request, call one method here and pack the reply. Everything here
raises McpError subclasses only; `api/interceptor.py` maps them to statuses."""
