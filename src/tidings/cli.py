"""The `tidings` command: serve, worker, db upgrade, projects and CSV import."""

from __future__ import annotations

import json
import logging
import secrets
import signal
import sys
import threading
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Annotated

import typer
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from tidings.auth import service as projects
from tidings.auth import users
from tidings.auth.schemas import ProjectPatch
from tidings.config import get_settings
from tidings.db import Database
from tidings.db import migrate as migrations
from tidings.errors import AppError
from tidings.ingest import service as ingestion
from tidings.ingest.inbox import ensure_inbox_schema
from tidings.segments import service as segments
from tidings.worker.runner import Worker, settle_heap

app = typer.Typer(help="Tidings: customer profiles from Segment-format data.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
project_app = typer.Typer(help="Projects and their keys.", no_args_is_help=True)
import_app = typer.Typer(help="Bulk imports.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(project_app, name="project")
app.add_typer(import_app, name="import")
user_app = typer.Typer(help="Dashboard users.", no_args_is_help=True)
app.add_typer(user_app, name="user")
segments_app = typer.Typer(help="Segments as code.", no_args_is_help=True)
app.add_typer(segments_app, name="segments")
FIRST_OWNER = "owner@tidings.local"
console = Console()
err = Console(stderr=True)


def _db() -> Database:
    return Database(get_settings())


def _fail(message: str) -> None:
    err.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(1)


def _logging() -> None:
    logging.basicConfig(
        level=get_settings().log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply every pending schema migration."""
    db = _db()
    migrations.upgrade(db)
    ensure_inbox_schema(db)
    console.print(f"Database at revision {migrations.current(db)}.")


def _first_project(db: Database) -> None:
    """On a fresh install: a first project and a first owner, printed once."""
    with db.session(write=True) as session:
        created = None
        if not projects.list_all(session):
            created = projects.create(session, name="My project")
        login = None
        if users.count(session) == 0:
            password = secrets.token_urlsafe(12)
            users.create_user(session, email=FIRST_OWNER, password=password, role="owner")
            login = (FIRST_OWNER, password)
    if created:
        console.print("[bold]Created your first project.[/bold] Keep the keys: shown once.")
        console.print(f"  write key:  {created.write_key}")
        console.print(f"  secret key: {created.secret_key}")
    if login:
        console.print(f"[bold]Dashboard login[/bold] (shown once): {login[0]} / {login[1]}")


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Interface to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
    no_worker: Annotated[
        bool, typer.Option("--no-worker", help="Do not run the embedded worker.")
    ] = False,
    migrate: Annotated[
        bool, typer.Option("--migrate", help="Apply pending migrations first.")
    ] = False,
    first_project: Annotated[
        bool,
        typer.Option(
            "--first-project", help="Create a project on a fresh install and print its keys."
        ),
    ] = False,
) -> None:
    """Serve the API (and the embedded worker)."""
    import uvicorn

    from tidings.main import create_app

    _logging()
    settings = get_settings()
    _check_smtp_url(settings.smtp_url)
    db = Database(settings)
    if migrate:
        before = migrations.current(db)
        migrations.upgrade(db)
        if migrations.current(db) != before:
            console.print(f"Database migrated to revision {migrations.current(db)}.")
    try:
        migrations.require_current(db)
    except AppError as exc:
        _fail(exc.message)
    if first_project:
        _first_project(db)
    db.dispose()
    host = host or settings.host
    port = port or settings.port
    console.print(
        f"Tidings listening on http://{host}:{port}  (API docs: http://{host}:{port}/docs)",
        soft_wrap=True,
    )
    # Links in emails point here unless TIDINGS_PUBLIC_URL says otherwise.
    settings = settings.model_copy(update={"host": host, "port": port})
    application = create_app(settings, worker=not no_worker)
    settle_heap()
    uvicorn.run(
        application,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        loop="uvloop",
        http="httptools",
        timeout_graceful_shutdown=5,
    )


def _check_smtp_url(url: str | None) -> None:
    """Refuse to start with an SMTP URL that could never work (said once, not every round)."""
    if url:
        from tidings.messaging.providers import parse_smtp_url

        try:
            parse_smtp_url(url)
        except ValueError as exc:
            _fail(str(exc))


def stop_on_signal(w: Worker) -> Callable[..., None]:
    """A signal handler that stops the worker. It runs in the main thread between two of its
    bytecodes, possibly while the worker loop holds its stop event's internal lock (inside
    Event.wait): setting the event right there would wait for that lock forever, so another
    thread sets it."""

    def handler(*_: object) -> None:
        threading.Thread(target=w.stop, name="tidings-stop").start()

    return handler


@app.command()
def worker() -> None:
    """Process the ingestion inbox and background jobs (run as many as you like on PostgreSQL)."""
    _logging()
    db = _db()
    try:
        migrations.require_current(db)
    except AppError as exc:
        _fail(exc.message)
    _check_smtp_url(db.settings.smtp_url)
    ensure_inbox_schema(db)
    w = Worker(db)
    settle_heap()
    signal.signal(signal.SIGTERM, stop_on_signal(w))
    console.print(f"Worker {w.name} started.")
    sys.stdout.flush()  # supervisors wait for this line
    try:
        w.run()
    except KeyboardInterrupt:
        w.stop()


@project_app.command("create")
def project_create(
    name: str, as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False
) -> None:
    """Create a project and print its write key and secret key (shown once)."""
    db = _db()
    try:
        with db.session(write=True) as session:
            created = projects.create(session, name=name)
    except AppError as exc:
        _fail(exc.message)
    if as_json:
        sys.stdout.write(json.dumps(created.model_dump()) + "\n")
        return
    console.print(f"Project {created.id} [bold]{created.name}[/bold]")
    console.print(f"  write key:  {created.write_key}")
    console.print(f"  secret key: {created.secret_key}  (shown once)")


@project_app.command("list")
def project_list() -> None:
    """List projects with their write keys."""
    db = _db()
    with db.session() as session:
        rows = projects.list_all(session)
        table = Table("id", "name", "write key", "secret key")
        for p in rows:
            table.add_row(str(p.id), p.name, p.write_key, p.secret_key_hint + "…")
    console.print(table)


@project_app.command("settings")
def project_settings(
    project: Annotated[str, typer.Argument(help="Project id, name or write key.")],
    require_email_to_create: Annotated[
        bool | None, typer.Option(help="Only create customers that have an email.")
    ] = None,
    require_user_id: Annotated[
        bool | None, typer.Option(help="Only create customers that have a userId.")
    ] = None,
    unknown_user_track: Annotated[
        str | None, typer.Option(help="create or drop events of unknown users.")
    ] = None,
    revenue_as_charge: Annotated[
        bool | None, typer.Option(help="Tracks with revenue become charges.")
    ] = None,
) -> None:
    """Show or change a project's identity policy."""
    db = _db()
    try:
        patch = ProjectPatch(
            require_email_to_create=require_email_to_create,
            require_user_id=require_user_id,
            unknown_user_track=unknown_user_track,
            revenue_as_charge=revenue_as_charge,
        )
    except ValueError:
        _fail("--unknown-user-track must be `create` or `drop`.")
    try:
        with db.session(write=True) as session:
            p = projects.get_by_reference(session, ref=project)
            shown = projects.update_settings(session, project_id=p.id, patch=patch)
    except AppError as exc:
        _fail(exc.message)
    data = shown.model_dump(exclude={"webhook_secret", "secret_key_hint"})
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


@user_app.command("create")
def user_create(
    email: Annotated[str, typer.Option(help="Sign-in email.")],
    password: Annotated[str, typer.Option(help="At least 8 characters.")],
    role: Annotated[str, typer.Option(help="owner, admin or member.")] = "member",
    project: Annotated[
        list[str] | None,
        typer.Option(help="Project id, name or write key (repeatable; default all)."),
    ] = None,
) -> None:
    """Create a dashboard user with a role in some or all projects."""
    db = _db()
    try:
        with db.session(write=True) as session:
            ids = (
                [projects.get_by_reference(session, ref=p).id for p in project] if project else None
            )
            user = users.create_user(
                session, email=email, password=password, role=role, project_ids=ids
            )
            email_shown = user.email
    except AppError as exc:
        _fail(exc.message)
    console.print(f"User {email_shown} created ({role}).")


@import_app.command("customers")
def import_customers(
    file: Annotated[Path, typer.Argument(help="CSV with a header row.")],
    project: Annotated[str, typer.Option("--project", help="Project id, name or write key.")],
) -> None:
    """Create or update customers from CSV (user_id, email, anonymous_id; other columns are
    traits). Bad rows are reported with their line number and skipped."""
    db = _db()
    try:
        with db.session() as session:
            pid = projects.get_by_reference(session, ref=project).id
        if not file.is_file():
            _fail(f"No such file: {file}")
        total = max(0, sum(1 for _ in ingestion.read_csv(file)))
        with Progress(
            TextColumn("importing"), BarColumn(), MofNCompleteColumn(), console=err
        ) as bar:
            task = bar.add_task("import", total=total)
            result = ingestion.import_customers(
                db, project_id=pid, path=file, progress=lambda n: bar.advance(task, n)
            )
    except AppError as exc:
        _fail(exc.message)
    for e in result.errors:
        err.print(f"line {e.line}: {e.message}", highlight=False)
    console.print(f"Imported {result.imported} customers; {len(result.errors)} rows skipped.")
    if result.errors:
        raise typer.Exit(2 if result.imported == 0 else 0)


def _definitions(path: Path) -> list[object]:
    """The segment definitions in a JSON or YAML file: one, a list, or {"segments": [...]}."""
    if not path.is_file():
        _fail(f"No such file: {path}")
    raw = path.read_text(encoding="utf-8")
    try:
        doc = json.loads(raw) if path.suffix.lower() == ".json" else yaml.safe_load(raw)
    except (ValueError, yaml.YAMLError) as exc:
        _fail(f"{path}: not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'}: {exc}")
    doc = _dates_as_text(doc)
    if isinstance(doc, dict) and isinstance(doc.get("segments"), list):
        return list(doc["segments"])
    return list(doc) if isinstance(doc, list) else [doc]


def _dates_as_text(value: object) -> object:
    """YAML reads an unquoted 2026-01-31 as a date: rules take dates as ISO-8601 text, as in
    JSON (whose object keys are text too)."""
    if isinstance(value, date):  # datetime included
        return value.isoformat()
    if isinstance(value, dict):
        return {
            k if isinstance(k, str) else str(_dates_as_text(k)): _dates_as_text(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_dates_as_text(v) for v in value]
    return value


@segments_app.command("apply")
def segments_apply(
    files: Annotated[list[Path], typer.Argument(help="JSON or YAML files of segment definitions.")],
    project: Annotated[str, typer.Option("--project", help="Project id, name or write key.")],
) -> None:
    """Create or update segments from files, matched by name (running it twice changes nothing).

    A definition is {"name", "description", "rules"}; a rule may name another segment by its
    name. All files are applied in one transaction: an invalid one changes nothing."""
    definitions = [d for f in files for d in _definitions(f)]
    db = _db()
    try:
        with db.session(write=True) as session:
            pid = projects.get_by_reference(session, ref=project).id
            results = segments.apply_definitions(session, project_id=pid, definitions=definitions)
    except AppError as exc:
        _fail(exc.message)
    for r in results:
        console.print(f"{r.action:9} {r.name} (id {r.id})", highlight=False)


def main() -> None:
    app()
