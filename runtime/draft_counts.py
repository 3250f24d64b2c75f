"""What a draft did (runtime/resident_draft.py, runtime/ngram_draft.py), for reports."""
from __future__ import annotations


class DraftCounts:
    """Rounds that drafted, plain decode steps taken instead, tokens drafted and kept."""

    def __init__(self):
        self.rounds = self.plain_steps = self.drafted = self.kept = 0

    def counted_plain(self) -> None:
        self.plain_steps += 1

    def record(self, drafted: int, emitted: int, kept: int) -> None:
        """Of `drafted` tokens, the caller emitted `emitted` samples, of which `kept` equalled
        the draft (each emitted sample tested one drafted token)."""
        self.rounds += 1
        self.drafted += drafted
        self.kept += kept

    def counts(self) -> dict:
        return {"rounds": self.rounds, "plain_steps": self.plain_steps, "drafted": self.drafted, "kept": self.kept}
