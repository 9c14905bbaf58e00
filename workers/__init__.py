"""Background processes that run beside the API servers, each a plain Redis-stream consumer (arq-style).

    workers/push.py     push delivery to phones through FCM and APNs (`python -m workers.push`)
    workers/alerts.py   alert delivery to the security team's sinks (`python -m workers.alerts`)
    workers/expiry.py   settles prompts that expire unanswered (`python -m workers.expiry`)

A deployment on Redis needs the expiry worker always, the alert worker once `[[alerts.sinks]]` are set and
the push worker once a push provider is (`pushauth.web.ops.expected_workers`; `pushauth serve` names the
missing ones at start). The processes here only wire things together (settings, Redis, providers, sinks,
signals); what they do lives in the `pushauth` package (`pushauth.push.dispatch`, `pushauth.alerts.delivery`,
`pushauth.challenges.expiry`, `pushauth.store.streams`) so that the embedded single-process mode can run the
same code
inside the server. Nothing in `pushauth/` imports this package. A challenge's expiry itself needs no
worker (it is computed on read, so no timer can be lost); the expiry worker makes the counting prompt.
"""
