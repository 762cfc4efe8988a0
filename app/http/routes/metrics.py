"""GET /metrics: the service's Prometheus registry (app/service/metrics.py), behind its own access rule."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.service.metrics import REGISTRY

from ..auth import metrics_access

router = APIRouter(tags=["health"])


@router.get("/metrics", summary="Prometheus metrics", dependencies=[Depends(metrics_access)],
            response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def metrics() -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
