"""cluster refits (every fit, its candidates and quality, the published model) and names

Revision ID: d5e6a7b80004
Revises: c3d4f1a20003
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "d5e6a7b80004"
down_revision: str | None = "c3d4f1a20003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "cluster_refits",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("fitted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.String(length=40), nullable=False),
        sa.Column("algorithm", sa.String(length=40), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("sample_size", sa.Integer(), nullable=False),
        sa.Column("silhouette", sa.Float(), nullable=True),
        sa.Column("davies_bouldin", sa.Float(), nullable=True),
        sa.Column("calinski_harabasz", sa.Float(), nullable=True),
        sa.Column("outlier_share", sa.Float(), nullable=True),
        sa.Column("sizes", sa.JSON(), nullable=False),
        sa.Column("kept", sa.JSON(), nullable=False),
        sa.Column("added", sa.JSON(), nullable=False),
        sa.Column("retired", sa.JSON(), nullable=False),
        sa.Column("fit_seconds", sa.Float(), nullable=False),
        sa.Column("candidates", sa.JSON(), nullable=False),
        sa.Column("model_version", sa.Integer(), nullable=False),
        sa.Column("model", sa.JSON(), nullable=False),
    )
    op.create_index("ix_cluster_refits_model_version", "cluster_refits", ["model_version"])
    op.create_table(
        "cluster_names",
        sa.Column("cluster_id", sa.String(length=40), primary_key=True),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("renamed_by", sa.String(length=200), nullable=False),
        sa.Column("renamed_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("cluster_names")
    op.drop_index("ix_cluster_refits_model_version", table_name="cluster_refits")
    op.drop_table("cluster_refits")
