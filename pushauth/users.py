"""User names: one canonical form, applied before any lookup.

`canonical(name)` = strip surrounding white space, Unicode NFKC, case-fold, NFKC again (case folding can
produce non-normalised text; this is Unicode's NFKC_Casefold in spirit). So "  Alice@NHS.net " and
"alice@nhs.net" are one user, and so are full-width and ASCII forms of the same letters. Control
characters and names longer than 256 characters are refused rather than silently altered.
"""

from __future__ import annotations

import unicodedata

from pushauth.errors import Unprocessable

MAX_LEN = 256


def canonical(name: str) -> str:
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name.strip()).casefold())
    if not folded:
        raise Unprocessable("user must not be empty", code="invalid_user")
    if len(folded) > MAX_LEN:
        raise Unprocessable(f"user is longer than {MAX_LEN} characters", code="invalid_user")
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn") for ch in folded):
        raise Unprocessable("user contains control or unassigned characters", code="invalid_user")
    return folded
