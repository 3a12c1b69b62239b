"""Prometheus metrics at /metrics, and the per-request access log line and latency sample.

/metrics is open like /health: scrapers on the private network need no token,
and it carries counts only, never contents.
"""

from __future__ import annotations

import logging

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from tornado.routing import PathMatches
from tornado.web import Application, RequestHandler

from runtime.httpserver import REFUSAL_REASONS
from server.handlers.base import JsonHandler, logged_uri
from server.metrics import HTTP_REFUSED, HTTP_REQUEST_DURATION

access_log = logging.getLogger("tornado.access")

UNMATCHED_ROUTE = "unmatched"

# Every reason the HTTP server refuses for is a series from the start, at 0.
for reason in REFUSAL_REASONS:
    HTTP_REFUSED.labels(reason=reason)


class MetricsHandler(JsonHandler):
    def get(self) -> None:
        """The metrics of this replica, in Prometheus' text format."""
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(generate_latest(REGISTRY))


def route_name(application: Application, handler: RequestHandler) -> str:
    """The name (or else the pattern) of the route that served the request.

    The raw path would make one series per session id; the route keeps the label
    set as small as the routing table.
    """
    for rule in application.wildcard_router.rules:
        if rule.matcher.match(handler.request) is not None:
            if rule.name:
                return rule.name
            if isinstance(rule.matcher, PathMatches):
                return rule.matcher.regex.pattern.removesuffix("$")
            return type(handler).__name__
    return UNMATCHED_ROUTE


def log_request(handler: RequestHandler) -> None:
    """The application's `log_function`: Tornado's access line, plus the latency sample."""
    request, status = handler.request, handler.get_status()
    seconds = request.request_time()
    # Unknown verbs are answered 405 by Tornado; they must not mint new label values.
    method = request.method if request.method in RequestHandler.SUPPORTED_METHODS else "OTHER"
    HTTP_REQUEST_DURATION.labels(
        method=method, route=route_name(handler.application, handler), status=str(status)
    ).observe(seconds)
    level = logging.INFO if status < 400 else logging.WARNING if status < 500 else logging.ERROR
    access_log.log(
        level,
        "%d %s %s (%s) %.2fms",
        status,
        request.method,
        logged_uri(request.uri or ""),
        request.remote_ip,
        1000.0 * seconds,
    )


default_handlers = [
    (r"/metrics", MetricsHandler),
]
