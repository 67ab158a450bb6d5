"""Templates: Liquid email designs (subject, preheader, HTML, text), the project's default
layout and the starter gallery.

Owns the `templates` table and sandboxed rendering (`render`). Must not import customers or
messaging: callers pass the data a template may read as plain dicts.
"""
