"""The HTTP surface: the app factory, middlewares, and one module of handlers per kind of client."""

from pushauth.web.app import create_app

__all__ = ["create_app"]
