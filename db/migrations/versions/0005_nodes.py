"""Nodes and session ownership, for several server processes on one database.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "nodes",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.Column("address", sa.String(256), nullable=False),
    )
    op.create_table(
        "session_owners",
        sa.Column("session_id", sa.String(128), primary_key=True),
        sa.Column("node_id", sa.String(64), nullable=True),
        sa.Column("fence", sa.BigInteger(), nullable=False),
        sa.Column("since", sa.Float(), nullable=False),
    )
    op.create_index("ix_session_owners_node_id", "session_owners", ["node_id"])


def downgrade() -> None:
    op.drop_index("ix_session_owners_node_id", "session_owners")
    op.drop_table("session_owners")
    op.drop_table("nodes")
