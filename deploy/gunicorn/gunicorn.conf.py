# gunicorn settings for a meshadapter-attached Socket.IO app (see app.py).
bind = "0.0.0.0:8000"
workers = 4
worker_class = "uvicorn.workers.UvicornWorker"
# Long-poll GETs are held up to pingInterval (25 s): keep worker timeouts above
# pingInterval + pingTimeout (45 s).
timeout = 60
graceful_timeout = 10
