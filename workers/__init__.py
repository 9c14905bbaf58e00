"""The worker processes that run beside the API servers on Redis. Each module is a short declaration (a
`pushauth.runtime.worker.Worker`: its kind, what it consumes, its precondition); the one runner in
pushauth/runtime/worker.py gives every worker the same command line, SIGTERM/SIGINT handling with a bounded
drain, a heartbeat, an optional metrics port and `--check`.

    workers/push.py     push delivery to phones through FCM and APNs     `python -m workers.push`
    workers/alerts.py   alert delivery to the security team's sinks      `python -m workers.alerts`
    workers/expiry.py   settles prompts that expire unanswered           `python -m workers.expiry`
    workers/radius.py   the RADIUS front (`pushauth radius`)            `python -m workers.radius`
                        declared in pushauth/radius/process.py beside its front

A deployment on Redis needs the expiry worker always, the alert worker once `[[alerts.sinks]]` are set and
the push worker once a push provider is (`pushauth.readiness.expected_workers`; `pushauth serve` names the
missing ones at start). What each does is built by the composition root (`pushauth.runtime.Runtime`'s
`push_job`, `alert_job`, `expiry_job`), which the server also uses to run the same jobs in its own process
on the embedded store. Nothing in `pushauth/` imports this package. A challenge's expiry needs no worker
(it is computed on read, so no timer can be lost); the expiry worker makes the counting prompt.
"""
