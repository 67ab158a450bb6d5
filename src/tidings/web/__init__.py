"""The dashboard: server-rendered pages (Jinja2, autoescaped) with small HTMX enhancements.

Thin layer over the same services as api/: parse the form or query, call one service, render.
Sign-in uses a server-side session (HttpOnly cookie); every POST carries a CSRF token.
"""
