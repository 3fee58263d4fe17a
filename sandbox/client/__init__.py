"""The gRPC client behind the `sandbox` commands that talk to a server."""
