"""The Flask extensions of the app: one instance of each, initialised by the app factory."""
from __future__ import annotations

from flask_migrate import Migrate
from flask_wtf.csrf import CSRFProtect

from .sockets import GuardedSock

csrf = CSRFProtect()
migrate = Migrate()
sock = GuardedSock()  # flask-sock, surviving broken clients (app/serving/sockets.py)
