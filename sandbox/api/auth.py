"""Identity from the verified peer certificate, and the interceptor that applies authz.

grpc's server interceptors do not see the TLS peer, so the interceptor wraps each
method handler: before the servicer runs, the wrapper reads the verified client
certificate from the call's auth context, checks the rule table
(sandbox.api.authz) and lets the call through or ends it. Unknown methods are
denied whoever asks.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import grpc

from sandbox.api import authz
from sandbox.api.pki import Identity, identity_from_pem
from sandbox.api.status import to_status
from sandbox.errors import PermissionDenied, SandboxError, Unauthenticated


@functools.lru_cache(maxsize=1024)
def _identity_of(pem: bytes) -> Identity:
    return identity_from_pem(pem)


def identify(context: grpc.ServicerContext) -> Identity:
    """The caller's identity; the TLS layer has verified the certificate chain."""
    certs: Any = context.auth_context().get("x509_pem_cert") or []
    if not certs:
        raise Unauthenticated("a client certificate is required")
    return _identity_of(bytes(certs[0]))


def _denied(context: grpc.ServicerContext, error: SandboxError) -> None:
    code, message = to_status(error)
    context.abort(code, message)


class AuthInterceptor(grpc.ServerInterceptor):
    """Deny by default: the caller's role must be in the method's rule."""

    def __init__(self, on_identity: Callable[[Identity], None] | None = None) -> None:
        self._on_identity = on_identity

    def _check(self, method: str, context: grpc.ServicerContext) -> None:
        try:
            who = identify(context)
            if not authz.allowed(method, who.role):
                raise PermissionDenied(f"a {who.role.value} may not call {method}")
            if self._on_identity is not None:
                self._on_identity(who)
        except SandboxError as error:
            _denied(context, error)
        except Exception as error:  # never let a bug here open the door
            code, message = to_status(error)
            context.abort(code, message)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method: str = handler_call_details.method
        check = self._check

        def guard(behavior: Callable[..., Any]) -> Callable[..., Any]:
            def guarded(request: Any, context: grpc.ServicerContext) -> Any:
                check(method, context)
                return behavior(request, context)

            return guarded

        h: Any = handler
        if h.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                guard(h.unary_unary), h.request_deserializer, h.response_serializer
            )
        if h.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                guard(h.unary_stream), h.request_deserializer, h.response_serializer
            )
        if h.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                guard(h.stream_unary), h.request_deserializer, h.response_serializer
            )
        return grpc.stream_stream_rpc_method_handler(
            guard(h.stream_stream), h.request_deserializer, h.response_serializer
        )
