"""How the app meets the network: bodies kept in memory, WebSockets that survive broken clients,
and, under gunicorn (scripts/serve.sh), the guarded worker and the redacting logs."""
