"""The admin console: the bridge seen and steered in a browser, on an operator port of its own.

Server-rendered HTML (Starlette + Jinja2, no JavaScript library, no build step).  Sign-in with
Microsoft (authorization code flow with PKCE through MSAL) for holders of an app role or group,
plus a local break-glass account; sessions live in Redis, every change is audited.
"""
