"""The OpenID Provider: push-approved sign-in for web apps and identity providers that speak OpenID Connect
(README: "Protect a web app with OpenID Connect"). Routes in pushauth/web/oidc.py."""
