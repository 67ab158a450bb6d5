"""/healthz and /metrics (Prometheus text format)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from sqlalchemy import text

from tidings import clock
from tidings.db import Database
from tidings.ingest import service as ingestion
from tidings.ingest.inbox import backlog
from tidings.segments import upkeep

router = APIRouter(include_in_schema=False)


@router.get("/healthz")
def healthz(request: Request) -> JSONResponse:
    db: Database = request.app.state.db
    try:
        with db.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        return JSONResponse({"status": "error", "message": str(exc)[:200]}, status_code=503)
    return JSONResponse({"status": "ok"})


@router.get("/metrics")
def metrics(request: Request) -> PlainTextResponse:
    db: Database = request.app.state.db
    writer = request.app.state.writer
    lines = [
        "# HELP tidings_requests_received_total Tracking requests acknowledged by this process.",
        "# TYPE tidings_requests_received_total counter",
        f"tidings_requests_received_total {writer.received_requests}",
        "# HELP tidings_messages_received_total Messages acknowledged by this process.",
        "# TYPE tidings_messages_received_total counter",
        f"tidings_messages_received_total {writer.received_messages}",
        "# HELP tidings_messages_processed_total Messages processed, by project and outcome.",
        "# TYPE tidings_messages_processed_total counter",
    ]
    with db.session() as session:
        for row in ingestion.stats(session):
            for status in ("accepted", "dropped", "rejected", "failed", "duplicate"):
                lines.append(
                    f'tidings_messages_processed_total{{project="{row.project_id}",'
                    f'status="{status}"}} {getattr(row, status)}'
                )
        lines += [
            "# HELP tidings_segment_upkeep_pending Queued segment upkeep (processed chunks, or"
            " customers left to a later round) not yet done, by project (PostgreSQL).",
            "# TYPE tidings_segment_upkeep_pending gauge",
        ]
        lines += [
            f'tidings_segment_upkeep_pending{{project="{pid}"}} {n}'
            for pid, n in sorted(upkeep.pending(session).items())
        ]
    pending, oldest = backlog(db)
    lag = (clock.now() - oldest).total_seconds() if oldest else 0.0
    lines += [
        "# HELP tidings_inbox_pending_requests Acknowledged requests waiting to be processed.",
        "# TYPE tidings_inbox_pending_requests gauge",
        f"tidings_inbox_pending_requests {pending}",
        "# HELP tidings_processing_lag_seconds Age of the oldest unprocessed request.",
        "# TYPE tidings_processing_lag_seconds gauge",
        f"tidings_processing_lag_seconds {max(lag, 0.0):.3f}",
    ]
    return PlainTextResponse(
        "\n".join(lines) + "\n", media_type="text/plain; version=0.0.4; charset=utf-8"
    )
