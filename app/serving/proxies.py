"""Take the client's address from a trusted front (nginx) only: werkzeug's ProxyFix, per request.

A request whose connection comes from one of ``TRUSTED_PROXIES`` gets its client address and
scheme from the ``X-Forwarded-For`` and ``X-Forwarded-Proto`` the front set (deploy/nginx.conf
overwrites them); any other request keeps its own address, so a client cannot name one.
"""
from __future__ import annotations

from werkzeug.middleware.proxy_fix import ProxyFix


def trust_proxies(wsgi_app, trusted: list[str] | tuple[str, ...] | None):
    """Return ``wsgi_app`` behind ProxyFix for requests from ``trusted`` addresses (unchanged if none)."""
    addresses = frozenset(trusted or ())
    if not addresses:
        return wsgi_app
    fixed = ProxyFix(wsgi_app, x_for=1, x_proto=1)

    def app(environ, start_response):
        chosen = fixed if environ.get("REMOTE_ADDR") in addresses else wsgi_app
        return chosen(environ, start_response)

    return app
