"""Versioned model checkpoints: a model and what it is, as bytes and back.

Layout: the magic line ``FRAUDSTREAM-CHECKPOINT``, one JSON header line (format version, model
version, created_at, trained_on, kind, features, SHA-256 of the payload), then the pickled model.
A checkpoint of another format version, or whose payload does not match its digest, is refused
with :class:`CheckpointError` instead of being misread. Checkpoints are trusted artefacts of this
system's own learner (pickle executes code on load): keep the store they live in private.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from dataclasses import dataclass
from typing import Any

from models.errors import CheckpointError
from models.model import FraudModel

MAGIC = b"FRAUDSTREAM-CHECKPOINT\n"
FORMAT_VERSION = 1


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A model at one moment: ``version`` grows by one with each checkpoint a learner makes."""

    version: int
    created_at: float
    trained_on: int
    model: FraudModel

    @property
    def model_version(self) -> str:
        """The name decisions carry, e.g. ``logreg-v42``."""
        return f"{self.model.kind}-v{self.version}"


def dumps(checkpoint: Checkpoint) -> bytes:
    """Serialise a checkpoint with its header."""
    payload = pickle.dumps(checkpoint.model, protocol=pickle.HIGHEST_PROTOCOL)
    header = {
        "format": FORMAT_VERSION,
        "version": checkpoint.version,
        "created_at": checkpoint.created_at,
        "trained_on": checkpoint.trained_on,
        "kind": checkpoint.model.kind,
        "features": list(checkpoint.model.config.features or []),
        "sha256": hashlib.sha256(payload).hexdigest(),
    }
    return MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n" + payload


def read_header(data: bytes) -> dict[str, Any]:
    """The checkpoint's header alone, validated, without unpickling the model."""
    if not data.startswith(MAGIC):
        raise CheckpointError("not a fraudstream checkpoint (bad magic)")
    end = data.find(b"\n", len(MAGIC))
    if end < 0:
        raise CheckpointError("truncated checkpoint: no header")
    try:
        header = json.loads(data[len(MAGIC) : end])
    except ValueError as exc:
        raise CheckpointError(f"corrupt checkpoint header: {exc}") from None
    if not isinstance(header, dict):
        raise CheckpointError("corrupt checkpoint header: not an object")
    fmt = header.get("format")
    if fmt != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint format {fmt!r} is not supported (this version reads {FORMAT_VERSION}); "
            "retrain or convert it"
        )
    for key in ("version", "created_at", "trained_on", "sha256"):
        if key not in header:
            raise CheckpointError(f"corrupt checkpoint header: no {key!r}")
    header["_payload_offset"] = end + 1
    return header


def loads(data: bytes) -> Checkpoint:
    """Read a checkpoint back, refusing other format versions and corrupt payloads."""
    header = read_header(data)
    payload = data[header["_payload_offset"] :]
    if hashlib.sha256(payload).hexdigest() != header["sha256"]:
        raise CheckpointError("corrupt checkpoint: payload digest does not match its header")
    model = pickle.loads(payload)
    if not isinstance(model, FraudModel):
        raise CheckpointError(f"checkpoint holds a {type(model).__name__}, not a FraudModel")
    return Checkpoint(
        version=int(header["version"]),
        created_at=float(header["created_at"]),
        trained_on=int(header["trained_on"]),
        model=model,
    )
