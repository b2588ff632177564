"""Test helper: prepared records held in memory."""


class ListStore:
    """A record store held in memory (same interface as conformer.data.records.RecordStore)."""

    def __init__(self, records):
        self.records = records

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        return self.records[i]
