"""Trusted code that runs inside sandbox containers.

Imports only the standard library, torch, numpy and safetensors: it is copied into
the runtime image and must not depend on the orchestrator. Everything a guest
writes is still treated as untrusted by the host, because provider code may have
run in the same container.
"""
