"""The review dashboard: candidates, their gate evidence, a home-page preview, approve/reject.

``create_app(registry_root)`` builds the FastAPI app; the view-model functions in
``bartops.dashboard.views`` are pure and do not depend on the web layer.
"""

from bartops.dashboard.app import create_app, serve

__all__ = ["create_app", "serve"]
