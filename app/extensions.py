"""The Flask extensions of the app: one instance of each, initialised by the app factory."""
from __future__ import annotations

from flask_migrate import Migrate
from flask_sock import Sock
from flask_wtf.csrf import CSRFProtect

csrf = CSRFProtect()
migrate = Migrate()
sock = Sock()
