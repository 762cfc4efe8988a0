"""The HTTP shell over app.service: the FastAPI app, routes, request models, auth, errors mapped
to statuses, SSE and the console.
"""
