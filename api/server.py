"""Running the api under uvicorn (uvloop + httptools when available)."""

from __future__ import annotations

import uvicorn

from api.app import create_app
from schemas.settings import Settings


def uvicorn_config(settings: Settings) -> uvicorn.Config:
    return uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        loop="auto",
        http="auto",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.shutdown_grace),
        lifespan="on",
    )


def run_api(settings: Settings) -> None:
    uvicorn.Server(uvicorn_config(settings)).run()
