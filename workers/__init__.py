"""Background processes that run beside the API servers, each a plain Redis-stream consumer (arq-style).

    workers/push.py    push delivery to phones through FCM and APNs (`python -m workers.push`)

Alert delivery to the security team's sinks comes with issue 4. The processes here only wire things
together (settings, Redis, providers, signals); what they do lives in the `pushauth` package
(`pushauth.delivery`, `pushauth.store.streams`) so that the embedded single-process mode can run the same
code inside the server. Nothing in `pushauth/` imports this package. Challenge expiry needs no worker: a
challenge is expired by its timestamp on every read, so no timer can be lost.
"""
