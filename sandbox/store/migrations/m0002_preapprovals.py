"""Migration 2: a data owner's standing approval of one algorithm on one dataset.

A job whose policy requires approval starts without waiting when its dataset's owner
pre-approved its algorithm; the approval is then recorded as the owner's.
"""

SQL = """
CREATE TABLE preapprovals (
    dataset_id TEXT NOT NULL REFERENCES datasets (id),
    algorithm_id TEXT NOT NULL REFERENCES algorithms (id),
    by_party TEXT NOT NULL REFERENCES parties (name),
    at REAL NOT NULL,
    PRIMARY KEY (dataset_id, algorithm_id)
) STRICT;
"""
