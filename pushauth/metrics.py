"""Prometheus metrics: every metric pushauth exports, in one place.

The API server serves them at `/metrics`; each worker at `--metrics-port` (prometheus-client's own HTTP
server). Labels are bounded sets (application ids, route patterns, providers, sinks, outcome words): never
a user, a device or a challenge id.

Stream gauges (lag, pending) and worker heartbeats are read from Redis when scraped
(`pushauth.store.gauges.refresh_store_gauges`), so any instance reports the whole deployment's queues.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# -- API ---------------------------------------------------------------------------------------------------

HTTP_REQUESTS = Counter("pushauth_http_requests_total", "HTTP requests by route pattern and status",
                        ["route", "method", "status"])
HTTP_SECONDS = Histogram("pushauth_http_request_seconds", "HTTP request latency by route pattern", ["route"],
                         buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5, 30))
CHALLENGES = Counter("pushauth_challenges_total",
                     "Sign-in requests by application and outcome (created, allowed_*, refused_*, approved, "
                     "denied_*, cancelled)", ["app", "outcome"])
TIME_TO_ANSWER = Histogram("pushauth_time_to_answer_seconds", "From prompt to the phone's answer",
                           buckets=(1, 2, 3, 5, 8, 13, 20, 30, 45, 60, 120, 300, 600))
TIME_TO_NOTIFY = Histogram("pushauth_time_to_notify_seconds",
                           "From the decision in Redis to the waiting login flow having it",
                           buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1))
IGNORED_PROMPTS = Counter("pushauth_prompts_expired_unanswered_total", "Prompts that expired unanswered")
ALERTS_ANNOUNCED = Counter("pushauth_alerts_announced_total",
                           "Alert versions handed to the alert stream (created: a new incident; updated: "
                           "its severity rose)", ["change"])
REPLICA_ACK_SHORTFALLS = Counter(
    "pushauth_replica_ack_shortfalls_total",
    "Changes fewer replicas acknowledged in time than store.replica_acks, by what was done (refuse, warn)",
    ["action"])
RATE_LIMITED = Counter("pushauth_rate_limited_total",
                       "Requests refused with 429 by a rate limit (pushauth/ratelimit/limiter.py), by scope "
                       "(ip, application, auth_failures)", ["scope"])
REDIS_ERRORS = Counter("pushauth_redis_errors_total", "Redis unreachable or timing out, by where", ["where"])

# -- workers -----------------------------------------------------------------------------------------------

PUSH_SENDS = Counter("pushauth_push_sends_total", "Push sends by provider and result", ["provider", "result"])
PUSH_STALE_TOKENS = Counter("pushauth_push_stale_tokens_total", "Push tokens marked stale", ["provider"])
PUSH_AUTH_ERRORS = Counter("pushauth_push_credential_errors_total",
                           "Sends refused for our own credentials (fix the provider config)", ["provider"])
# From handing a push to its provider to the provider's answer (or the send's own deadline), the wait for a
# connection slot and an OAuth2 token included: what the worker experiences, one figure per provider.
PUSH_SEND_SECONDS = Histogram("pushauth_push_send_seconds", "Push send latency by provider", ["provider"],
                              buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))
# Certificate auth only (token auth has no expiry): Apple refuses every push once the certificate expires,
# so operators alert on `pushauth_push_apns_certificate_expiry_timestamp_seconds - time() < 30 * 86400`.
APNS_CERT_EXPIRY = Gauge("pushauth_push_apns_certificate_expiry_timestamp_seconds",
                         "notAfter of the APNs client certificate, Unix seconds", ["topic"])
ALERT_DELIVERIES = Counter("pushauth_alert_deliveries_total", "Alert deliveries by sink and result",
                           ["sink", "result"])
# CIBA pings and Keycloak callbacks (pushauth/oidc/outbox.py), once each is settled: taken (2xx), refused
# (the receiver's final no) or failed (every retry spent: the client never hears of the decision).
OIDC_NOTIFICATIONS = Counter("pushauth_oidc_notifications_total",
                             "OpenID notifications settled, by kind (ping, keycloak) and result "
                             "(taken, refused, failed)", ["kind", "result"])

# -- the RADIUS front (pushauth/radius/) ---------------------------------------------------------------------

RADIUS_REQUESTS = Counter("pushauth_radius_requests_total", "Access-Requests answered, by client and answer "
                          "(accept, reject, challenge)", ["client", "answer"])
RADIUS_DROPPED = Counter("pushauth_radius_dropped_total", "RADIUS packets dropped unanswered, by reason "
                         "(unknown_client, no_message_authenticator, bad_message_authenticator, malformed, "
                         "too_many_held, stopping, store_unavailable, ...)", ["reason"])
RADIUS_RETRANSMITS = Counter("pushauth_radius_retransmits_total",
                             "Copies of a request already held (dropped) or already answered (the cached "
                             "reply resent), by this instance (held, answered) or another one "
                             "(held_elsewhere, answered_elsewhere)", ["state"])
RADIUS_NO_MESSAGE_AUTHENTICATOR = Counter(
    "pushauth_radius_no_message_authenticator_total",
    "Access-Requests taken without a Message-Authenticator from a client that opted out", ["client"])
RADIUS_HELD = Gauge("pushauth_radius_held", "Access-Requests held now (password check or phone)")

# -- read from Redis when scraped --------------------------------------------------------------------------

STREAM_LAG = Gauge("pushauth_stream_lag", "Entries not yet read by the stream's consumer group", ["stream"])
STREAM_PENDING = Gauge("pushauth_stream_pending", "Entries read but not acknowledged", ["stream"])
STREAM_DELAYED = Gauge("pushauth_stream_delayed", "Entries waiting for a retry", ["stream"])
STREAM_DEAD = Gauge("pushauth_stream_dead_letters", "Entries in the dead letter", ["stream"])
WORKERS_ALIVE = Gauge("pushauth_workers_alive", "Workers with a fresh heartbeat", ["kind"])
