"""Wire protocols: each maps its messages onto a `TranscriptionSession` and back."""
