"""pushauth: the server side of push sign-in approval (enrollment, signed challenges, number matching,
approve/deny, and escalation of unexpected prompts)."""

__version__ = "0.1.0"
