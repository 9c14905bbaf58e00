// The OpenID form-post answer (pushauth/web/oidc_pages.py form_post): post it at once, as the response mode asks.
document.addEventListener("DOMContentLoaded", () => document.getElementById("form-post").submit());
