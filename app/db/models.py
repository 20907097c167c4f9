"""Typed SQLAlchemy 2 models. All SQL lives in `app.db`."""

import uuid

from sqlalchemy import Integer, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, TimestampMixin


def new_id() -> str:
    return uuid.uuid4().hex


class User(TimestampMixin, Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    api_key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    """sha256 of the key: keys are 256-bit random tokens, so a fast hash is not brute-forceable."""
    api_key_prefix: Mapped[str] = mapped_column(String(16))
    """The first characters of the key, for people to recognise which key is which."""


class AdapterBlob(TimestampMixin, Base):
    """Adapter weights stored in the database (the default adapter-store backend)."""

    __tablename__ = "adapter_blobs"

    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    size: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
