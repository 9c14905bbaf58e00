"""Challenges: a sign-in's prompt, from the login flow's request to the phone's answer
and the waiter's wake-up.

`service` (create, fetch, answer, cancel, status), `events` (waking waiters across instances), `expiry`
(settling prompts nobody answered), `context` (what the phone is told about the sign-in), and `lua/`, the
scripts that make each transition atomic.
"""
