"""OpenTelemetry spans per call, the trace context carried inside the message.

Off unless configured, and then the call path does not change: ``enabled`` is False and no
OpenTelemetry module is imported. Configured by the environment, which procs inherit:

- ``FORGE_TRACE_FILE=PATH``: every process appends its finished spans to PATH, one JSON
  document per span (OpenTelemetry's own JSON form);
- ``FORGE_TRACING=otlp``: spans go to an OTLP collector through
  ``opentelemetry-exporter-otlp`` (install it; its usual ``OTEL_EXPORTER_OTLP_*`` settings).

When on, a call from inside a span (or from nowhere: a new trace) becomes a client span
``Class.endpoint`` at the caller and a server span of the same name in the proc that runs it,
its child: the caller's W3C ``traceparent`` travels in the message, ahead of the call's
body, under its own message kind (``REQUEST_TRACED``). Calls the endpoint makes in turn are
children of its server span, so one ``route()`` that fans out over actors is one trace.
Broadcasts are not traced.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from . import _messages as m

enabled = False
_tracer: Any = None


def setup(on_stop: list | None = None) -> None:
    """Read the environment (once per process, when its runtime starts)."""
    global enabled, _tracer
    path, kind = os.environ.get("FORGE_TRACE_FILE"), os.environ.get("FORGE_TRACING")
    if not (path or kind) or _tracer is not None:
        return
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    name = os.environ.get("FORGE_MESH") or "client"
    provider = TracerProvider(resource=Resource.create({
        "service.name": f"forge:{name}", "process.pid": os.getpid()}))
    if path:
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        out = open(path, "a", buffering=1)
        # Written as each span ends: a proc that is killed loses nothing it finished.
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(
            out=out, formatter=lambda span: span.to_json(indent=None) + "\n")))
    if kind == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    _tracer = provider.get_tracer("forge_core")
    if on_stop is not None:
        on_stop.append(provider.shutdown)  # procs end with os._exit: flush first
    import atexit

    atexit.register(provider.shutdown)
    trace.set_tracer_provider(provider)
    enabled = True


def start_client_span(class_name: str, endpoint: str) -> tuple[Any, bytes]:
    """A client span for one call, and the ``traceparent`` to send with it."""
    from opentelemetry import propagate, trace

    span = _tracer.start_span(f"{class_name}.{endpoint}", kind=trace.SpanKind.CLIENT,
                              attributes={"forge.endpoint": endpoint, "forge.actor": class_name})
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    return span, carrier.get("traceparent", "").encode()


def traced_body(traceparent: bytes, payload: bytes) -> bytes:
    return bytes([len(traceparent)]) + traceparent + payload


def end_client_span(span: Any, future: Any) -> None:
    """When the call's future is done (a done-callback)."""
    from opentelemetry.trace import Status, StatusCode

    try:
        failed = future.cancelled() or future.exception() is not None
    except Exception:
        failed = True
    if failed:
        span.set_status(Status(StatusCode.ERROR))
    span.end()


def serve(runtime: Any, request_id: int, meta: bytes, buffers: list, reply: Callable | None,
          track: Callable | None) -> None:
    """Run a ``REQUEST_TRACED`` call inside a server span that is the caller's span's child."""
    kind, request_id, actor_id, offset = m.unpack(meta)
    tp_length = meta[offset]
    traceparent = bytes(meta[offset + 1:offset + 1 + tp_length]).decode(errors="replace")
    body = offset + 1 + tp_length
    host = runtime.actors.get(actor_id)
    if host is None:
        if reply is not None:
            reply(m.REPLY_ERR, request_id, *m.encode_failure(
                f"no actor {actor_id.decode(errors='replace')!r} in {runtime.info}"))
        return
    endpoint = bytes(meta[body + 1:body + 1 + meta[body]]).decode(errors="replace")
    if _tracer is None:  # the caller traces, we do not: serve the call all the same
        host.deliver(request_id, meta, body, buffers, reply, track)
        return
    from opentelemetry import context, propagate, trace

    parent = propagate.extract({"traceparent": traceparent})
    span = _tracer.start_span(f"{host.class_name}.{endpoint}", context=parent,
                              kind=trace.SpanKind.SERVER,
                              attributes={"forge.endpoint": endpoint, "forge.actor": host.actor_id,
                                          "forge.rank": host.point.rank})
    token = context.attach(trace.set_span_in_context(span, parent))

    def traced_reply(kind: int, rid: int, payload: bytes, out: list) -> None:
        if kind == m.REPLY_ERR:
            from opentelemetry.trace import Status, StatusCode

            span.set_status(Status(StatusCode.ERROR))
        span.end()
        if reply is not None:
            reply(kind, rid, payload, out)

    try:
        # An async endpoint's task copies this context: its own calls join the trace.
        host.deliver(request_id, meta, body, buffers, traced_reply, track)
    finally:
        context.detach(token)
