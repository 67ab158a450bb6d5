"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-22 17:36:13.484468
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import tidings.db.types

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "event_catalog",
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("type", sa.String(length=10), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column(
            "properties", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False
        ),
        sa.Column("first_seen", tidings.db.types.UTCDateTime(), nullable=False),
        sa.Column("last_seen", tidings.db.types.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("project_id", "type", "name", name=op.f("pk_event_catalog")),
    )
    op.create_table(
        "ingest_messages",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("message_id", sa.String(length=100), nullable=False),
        sa.Column("type", sa.String(length=16), nullable=True),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("user_id", sa.String(length=255), nullable=True),
        sa.Column("anonymous_id", sa.String(length=255), nullable=True),
        sa.Column("event", sa.String(length=255), nullable=True),
        sa.Column("customer_id", sa.BigInteger(), nullable=True),
        sa.Column("received_at", tidings.db.types.UTCDateTime(), nullable=False),
        sa.Column("processed_at", tidings.db.types.UTCDateTime(), nullable=False),
        sa.Column("raw", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ingest_messages")),
    )
    with op.batch_alter_table("ingest_messages", schema=None) as batch_op:
        batch_op.create_index(
            "ix_ingest_messages_project_id_id", ["project_id", "id"], unique=False
        )
        batch_op.create_index(
            "ix_ingest_messages_project_status_id", ["project_id", "status", "id"], unique=False
        )
        batch_op.create_index(
            "uq_ingest_messages_project_message_id", ["project_id", "message_id"], unique=True
        )

    op.create_table(
        "ingest_stats",
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("accepted", sa.BigInteger(), nullable=False),
        sa.Column("dropped", sa.BigInteger(), nullable=False),
        sa.Column("rejected", sa.BigInteger(), nullable=False),
        sa.Column("failed", sa.BigInteger(), nullable=False),
        sa.Column("duplicate", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("project_id", name=op.f("pk_ingest_stats")),
    )
    op.create_table(
        "jobs",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column(
            "payload", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False
        ),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("run_at", tidings.db.types.UTCDateTime(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("locked_by", sa.String(length=100), nullable=True),
        sa.Column("locked_until", tidings.db.types.UTCDateTime(), nullable=True),
        sa.Column("dedupe_key", sa.String(length=200), nullable=True),
        sa.Column("created_at", tidings.db.types.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
    )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index("ix_jobs_status_run_at", ["status", "run_at"], unique=False)
        batch_op.create_index("uq_jobs_dedupe_key", ["dedupe_key"], unique=True)

    op.create_table(
        "leases",
        sa.Column("name", sa.String(length=50), nullable=False),
        sa.Column("holder", sa.String(length=100), nullable=True),
        sa.Column("expires_at", tidings.db.types.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_leases")),
    )
    op.create_table(
        "projects",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("write_key", sa.String(length=64), nullable=False),
        sa.Column("secret_key_hash", sa.String(length=64), nullable=False),
        sa.Column("secret_key_hint", sa.String(length=16), nullable=False),
        sa.Column("webhook_secret", sa.String(length=64), nullable=False),
        sa.Column("require_email_to_create", sa.Boolean(), nullable=False),
        sa.Column("require_user_id", sa.Boolean(), nullable=False),
        sa.Column("unknown_user_track", sa.String(length=10), nullable=False),
        sa.Column("revenue_as_charge", sa.Boolean(), nullable=False),
        sa.Column("created_at", tidings.db.types.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_projects")),
        sa.UniqueConstraint("secret_key_hash", name=op.f("uq_projects_secret_key_hash")),
        sa.UniqueConstraint("write_key", name=op.f("uq_projects_write_key")),
    )
    op.create_table(
        "trait_catalog",
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("customer_count", sa.Integer(), nullable=False),
        sa.Column("first_seen", tidings.db.types.UTCDateTime(), nullable=False),
        sa.Column("last_seen", tidings.db.types.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("project_id", "key", name=op.f("pk_trait_catalog")),
    )
    op.create_table(
        "customers",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.String(length=255), nullable=True),
        sa.Column("email", sa.String(length=320), nullable=True),
        sa.Column("name", sa.String(length=255), nullable=True),
        sa.Column(
            "traits", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False
        ),
        sa.Column(
            "audiences", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False
        ),
        sa.Column("lifetime_value_units", sa.BigInteger(), nullable=False),
        sa.Column(
            "revenue_by_currency",
            sa.JSON().with_variant(postgresql.JSONB(), "postgresql"),
            nullable=False,
        ),
        sa.Column("charge_count", sa.Integer(), nullable=False),
        sa.Column("last_charge_at", tidings.db.types.UTCDateTime(), nullable=True),
        sa.Column("first_seen", tidings.db.types.UTCDateTime(), nullable=False),
        sa.Column("last_seen", tidings.db.types.UTCDateTime(), nullable=False),
        sa.Column("created_at", tidings.db.types.UTCDateTime(), nullable=False),
        sa.Column("updated_at", tidings.db.types.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_customers_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_customers")),
    )
    with op.batch_alter_table("customers", schema=None) as batch_op:
        batch_op.create_index("ix_customers_project_email", ["project_id", "email"], unique=False)
        batch_op.create_index(
            "ix_customers_project_last_seen", ["project_id", "last_seen"], unique=False
        )
        batch_op.create_index(
            "uq_customers_project_user_id", ["project_id", "user_id"], unique=True
        )

    op.create_table(
        "groups",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("group_id", sa.String(length=255), nullable=False),
        sa.Column(
            "traits", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False
        ),
        sa.Column("first_seen", tidings.db.types.UTCDateTime(), nullable=False),
        sa.Column("last_seen", tidings.db.types.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_groups_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_groups")),
    )
    with op.batch_alter_table("groups", schema=None) as batch_op:
        batch_op.create_index("uq_groups_project_group_id", ["project_id", "group_id"], unique=True)

    op.create_table(
        "charges",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column(
            "customer_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("amount_units", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("timestamp", tidings.db.types.UTCDateTime(), nullable=False),
        sa.Column("message_id", sa.String(length=100), nullable=True),
        sa.ForeignKeyConstraint(
            ["customer_id"],
            ["customers.id"],
            name=op.f("fk_charges_customer_id_customers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_charges")),
    )
    with op.batch_alter_table("charges", schema=None) as batch_op:
        batch_op.create_index(
            "ix_charges_customer_timestamp", ["customer_id", "timestamp"], unique=False
        )

    op.create_table(
        "customer_anonymous_ids",
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("anonymous_id", sa.String(length=255), nullable=False),
        sa.Column(
            "customer_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.ForeignKeyConstraint(
            ["customer_id"],
            ["customers.id"],
            name=op.f("fk_customer_anonymous_ids_customer_id_customers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "project_id", "anonymous_id", name=op.f("pk_customer_anonymous_ids")
        ),
    )
    with op.batch_alter_table("customer_anonymous_ids", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_customer_anonymous_ids_customer_id"), ["customer_id"], unique=False
        )

    op.create_table(
        "customer_groups",
        sa.Column(
            "customer_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("group_pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("created_at", tidings.db.types.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["customer_id"],
            ["customers.id"],
            name=op.f("fk_customer_groups_customer_id_customers"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["group_pk"],
            ["groups.id"],
            name=op.f("fk_customer_groups_group_pk_groups"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("customer_id", "group_pk", name=op.f("pk_customer_groups")),
    )
    with op.batch_alter_table("customer_groups", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_customer_groups_group_pk"), ["group_pk"], unique=False)

    op.create_table(
        "customer_tags",
        sa.Column(
            "customer_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("tag", sa.String(length=100), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("created_at", tidings.db.types.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["customer_id"],
            ["customers.id"],
            name=op.f("fk_customer_tags_customer_id_customers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("customer_id", "tag", name=op.f("pk_customer_tags")),
    )
    with op.batch_alter_table("customer_tags", schema=None) as batch_op:
        batch_op.create_index("ix_customer_tags_project_tag", ["project_id", "tag"], unique=False)

    op.create_table(
        "events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column(
            "customer_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("type", sa.String(length=10), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=True),
        sa.Column(
            "properties", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False
        ),
        sa.Column(
            "context", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False
        ),
        sa.Column("timestamp", tidings.db.types.UTCDateTime(), nullable=False),
        sa.Column("received_at", tidings.db.types.UTCDateTime(), nullable=False),
        sa.Column("message_id", sa.String(length=100), nullable=True),
        sa.ForeignKeyConstraint(
            ["customer_id"],
            ["customers.id"],
            name=op.f("fk_events_customer_id_customers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
    )
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.create_index(
            "ix_events_customer_timeline", ["customer_id", "timestamp", "id"], unique=False
        )
        batch_op.create_index("ix_events_project_name", ["project_id", "name"], unique=False)

    op.create_table(
        "inbox",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("received_at", tidings.db.types.UTCDateTime(), nullable=False),
        sa.Column("ip", sa.String(length=64), nullable=True),
        sa.Column("token", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inbox")),
    )


def downgrade() -> None:
    op.drop_table("inbox")
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index("ix_events_project_name")
        batch_op.drop_index("ix_events_customer_timeline")

    op.drop_table("events")
    with op.batch_alter_table("customer_tags", schema=None) as batch_op:
        batch_op.drop_index("ix_customer_tags_project_tag")

    op.drop_table("customer_tags")
    with op.batch_alter_table("customer_groups", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_customer_groups_group_pk"))

    op.drop_table("customer_groups")
    with op.batch_alter_table("customer_anonymous_ids", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_customer_anonymous_ids_customer_id"))

    op.drop_table("customer_anonymous_ids")
    with op.batch_alter_table("charges", schema=None) as batch_op:
        batch_op.drop_index("ix_charges_customer_timestamp")

    op.drop_table("charges")
    with op.batch_alter_table("groups", schema=None) as batch_op:
        batch_op.drop_index("uq_groups_project_group_id")

    op.drop_table("groups")
    with op.batch_alter_table("customers", schema=None) as batch_op:
        batch_op.drop_index("uq_customers_project_user_id")
        batch_op.drop_index("ix_customers_project_last_seen")
        batch_op.drop_index("ix_customers_project_email")

    op.drop_table("customers")
    op.drop_table("trait_catalog")
    op.drop_table("projects")
    op.drop_table("leases")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("uq_jobs_dedupe_key")
        batch_op.drop_index("ix_jobs_status_run_at")

    op.drop_table("jobs")
    op.drop_table("ingest_stats")
    with op.batch_alter_table("ingest_messages", schema=None) as batch_op:
        batch_op.drop_index("uq_ingest_messages_project_message_id")
        batch_op.drop_index("ix_ingest_messages_project_status_id")
        batch_op.drop_index("ix_ingest_messages_project_id_id")

    op.drop_table("ingest_messages")
    op.drop_table("event_catalog")
