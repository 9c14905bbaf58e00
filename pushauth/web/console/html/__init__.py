"""The HTML of the security team's console, one module per thing it renders:

- `layout`: the headers every page carries, escaping (`render`, `Markup`), the page shell and navigation,
  notices, error pages and the small pieces the pages share (times, severity badges, pager links);
- `signin`: the sign-in page (a push to the person's phone, or an admin token);
- `alerts`: alert titles and explanations, the live feed's items, the feed, the history and an alert's page;
- `users`: the user search, a user's page (blocks, devices, one-time-code methods, recent prompts,
  actions) and what the service desk hands a user: an access code, a new phone's QR code, an
  authenticator app's seed and its activation form;
- `audit`: the audit trail page (the CSV is written by `pushauth/web/console/pages.py`);
- `accounts`: the console accounts page.

Pages have no inline script or style (the Content-Security-Policy forbids both): behaviour and looks come
from the static files in `pushauth/web/console_static/`, data for the scripts from `data-*` attributes.
"""
