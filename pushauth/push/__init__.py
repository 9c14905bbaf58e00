"""Push providers: one module per provider behind the narrow contract in `base.py`.

Providers know nothing of challenges beyond the payload they carry (`PushMessage`), and nothing of Redis;
the push worker (`workers/push.py`) decides what to send, records delivery state and schedules retries
from the `Outcome` a provider returns.
"""

from pushauth.push.base import Outcome, OutcomeKind, PushMessage, PushProvider

__all__ = ["Outcome", "OutcomeKind", "PushMessage", "PushProvider"]
