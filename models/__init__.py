"""The pure scoring core of fraudstream.

Typed records, the feature definitions with their in-memory reference computation, the online
River model and its checkpoints, the delayed-label learner, the decision policy and the detection
metrics. Nothing here performs I/O or imports a broker, cache, web or LLM client: the processor,
the API and the replay tools all call this core, so the backtest and the live system share it.
"""

from models.errors import CheckpointError, FraudstreamError, InvalidRecord, PolicyError
from models.records import (
    Action,
    Decision,
    FeatureVector,
    Label,
    Reason,
    Transaction,
    label_from_wire,
    mask_pan,
    transaction_from_wire,
)

__all__ = [
    "Action",
    "CheckpointError",
    "Decision",
    "FeatureVector",
    "FraudstreamError",
    "InvalidRecord",
    "Label",
    "PolicyError",
    "Reason",
    "Transaction",
    "label_from_wire",
    "mask_pan",
    "transaction_from_wire",
]
