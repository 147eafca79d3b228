"""Property-based tests of the edges where outside bytes enter fraudstream.

Hypothesis throws hostile input at the wire decoder, the worker's dead-letter record, the file
readers and the card-number masking, and checks what must hold for every input: a valid record
or one clear error that names why, never another exception, never a silent drop, never an
unmasked card number. ``FRAUD_HYPOTHESIS_PROFILE=fraudstream-deep`` runs twenty times as many
examples as the default ``fraudstream-ci`` profile.
"""

__all__: list[str] = []
