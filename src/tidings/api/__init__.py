"""HTTP entry points: the Segment tracking API (/v1) and the management API (/api).

Thin layer: parse, call one service function, serialise. Turns AppError into JSON errors.
"""
