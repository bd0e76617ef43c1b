"""Protocol plugins: the SDK for writing one, and the protocols bundled with the server."""
