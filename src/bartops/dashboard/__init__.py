"""The review dashboard: candidates, their gate evidence, a home-page preview, approve/reject.

``create_app(registry_root)`` builds the FastAPI app; the view-model functions in
``bartops.dashboard.views`` are pure and do not depend on the web layer.  The web layer is
imported on first use, so the CLI stays quick to start.
"""

__all__ = ["create_app", "serve"]


def __getattr__(name: str):
    if name in __all__:
        from bartops.dashboard import app

        return getattr(app, name)
    raise AttributeError(name)
