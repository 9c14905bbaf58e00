"""User names: one canonical form, applied before any lookup.

`canonical(name)` = strip surrounding white space, Unicode NFKC, case-fold, NFKC again (case folding can
produce non-normalised text; this is Unicode's NFKC_Casefold in spirit), then strip white space again:
NFKC itself can make white space at the ends (U+00B4 ACUTE ACCENT is U+0020 U+0301 under NFKC), and a
form that kept it would change on a second pass, so the security team could not find the user an alert
names. So "  Alice@NHS.net " and "alice@nhs.net" are one user, and so are full-width and ASCII forms of
the same letters.

The canonical form is a fixed point: canonicalising it again gives it back. A name whose form would
change on a second pass is refused, as are control characters and names longer than 256 characters,
rather than silently altered. (No such name is known with Python 3.11's Unicode 14 tables; the check is
what keeps the guarantee if a future table makes one.)
"""

from __future__ import annotations

import unicodedata

from pushauth.errors import Unprocessable

MAX_LEN = 256
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn"})


def _fold(name: str) -> str:
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name.strip()).casefold()).strip()


def canonical(name: str) -> str:
    folded = _fold(name)
    if not folded:
        raise Unprocessable("user must not be empty", code="invalid_user")
    if len(folded) > MAX_LEN:
        raise Unprocessable(f"user is longer than {MAX_LEN} characters", code="invalid_user")
    if any(unicodedata.category(ch) in _REFUSED_CATEGORIES for ch in folded):
        raise Unprocessable("user contains control or unassigned characters", code="invalid_user")
    if _fold(folded) != folded:
        raise Unprocessable("user has no stable canonical form", code="invalid_user")
    return folded
