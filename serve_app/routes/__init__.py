"""API routes, one router per resource; ``serve_app.api`` mounts them all."""
