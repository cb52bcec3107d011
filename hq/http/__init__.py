"""Every HTTP route HQ serves, and the one error boundary (:mod:`hq.http.boundary`) that answers their refusals.

Routes raise :class:`hq.errors.HQError` to refuse; they never build an error response themselves.
"""
