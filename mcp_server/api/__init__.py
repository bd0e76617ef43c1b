"""The gRPC edge: thin servicers, the error interceptor, and the server that hosts them."""
