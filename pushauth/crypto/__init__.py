"""Crypto: strict ES256 JWS, server keys, device request authentication, secrets and hashing."""
