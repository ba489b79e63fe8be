"""The admin screens under /admin: sign-in, dashboard, users and invites, audit log, settings.

One blueprint; each screen family has its own module. Every view except the sign-in page
needs a signed-in admin: pages redirect to the sign-in page, /admin/api/... answers 401 JSON.
"""
from __future__ import annotations

# Each screen family registers its views on the one blueprint when imported.
from . import audit, auth, dashboard, settings, users  # noqa: F401
from .blueprint import bp

__all__ = ["bp"]
