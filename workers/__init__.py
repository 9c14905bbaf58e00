"""Background processes that run beside the API servers (each a plain Redis-stream consumer, arq-style).

Planned here, each in its own module: push delivery to FCM/APNs (issue 3) and durable alert delivery
to the security team's sinks (issue 4). The API servers only enqueue; nothing in `pushauth/` imports this
package. Challenge expiry needs no worker: a challenge is expired by its timestamp on every read, so no
timer can be lost.
"""
