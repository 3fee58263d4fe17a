"""Migration 1: parties, datasets, algorithms, jobs and their history, releases, quotas.

Frozen once released: a migration's text is checksummed into `schema_migrations`,
and a database whose applied migration differs from the code's is refused. Change
the schema with a new migration module, never by editing this one.

Beyond the Python checks, the database defends its own invariants: the job state
machine (`job_transitions`, enforced by a trigger on every state update), releases
that exist only for jobs in state `release` and can never be changed or deleted, and
a job history that is append-only.
"""

SQL = """
CREATE TABLE parties (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL CHECK (role IN ('data_owner', 'provider', 'operator', 'security')),
    created REAL NOT NULL
) STRICT;

CREATE TABLE datasets (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL REFERENCES parties (name),
    name TEXT NOT NULL,
    blob_sha256 TEXT NOT NULL CHECK (length(blob_sha256) = 64),
    plaintext_sha256 TEXT NOT NULL CHECK (length(plaintext_sha256) = 64),
    size INTEGER NOT NULL CHECK (size >= 0),
    num_classes INTEGER NOT NULL CHECK (num_classes >= 2),
    input_shape TEXT NOT NULL,
    created REAL NOT NULL
) STRICT;
CREATE INDEX datasets_by_created ON datasets (created, id);
CREATE INDEX datasets_by_owner ON datasets (owner, created, id);

CREATE TABLE algorithms (
    id TEXT PRIMARY KEY,
    provider TEXT NOT NULL REFERENCES parties (name),
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    blob_sha256 TEXT NOT NULL CHECK (length(blob_sha256) = 64),
    created REAL NOT NULL,
    UNIQUE (provider, name, version)
) STRICT;
CREATE INDEX algorithms_by_created ON algorithms (created, id);
CREATE INDEX algorithms_by_provider ON algorithms (provider, created, id);

CREATE TABLE job_states (
    state TEXT PRIMARY KEY
) STRICT;
INSERT INTO job_states (state) VALUES
    ('queued'), ('architecture'), ('train'), ('gate'), ('checks'), ('dp_retrain'),
    ('decide'), ('release'), ('done'), ('failed'), ('cancelled');

CREATE TABLE job_transitions (
    from_state TEXT NOT NULL REFERENCES job_states (state),
    to_state TEXT NOT NULL REFERENCES job_states (state),
    PRIMARY KEY (from_state, to_state)
) STRICT;
INSERT INTO job_transitions (from_state, to_state) VALUES
    ('queued', 'architecture'),
    ('architecture', 'train'), ('architecture', 'decide'),
    ('train', 'gate'), ('train', 'decide'),
    ('gate', 'checks'), ('gate', 'decide'),
    ('checks', 'dp_retrain'), ('checks', 'decide'),
    ('dp_retrain', 'decide'),
    ('decide', 'release'), ('decide', 'done'),
    ('release', 'done');
INSERT INTO job_transitions (from_state, to_state)
    SELECT state, 'failed' FROM job_states WHERE state NOT IN ('done', 'failed', 'cancelled')
    UNION ALL
    SELECT state, 'cancelled' FROM job_states WHERE state NOT IN ('done', 'failed', 'cancelled');

CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    dataset_id TEXT NOT NULL REFERENCES datasets (id),
    algorithm_id TEXT NOT NULL REFERENCES algorithms (id),
    submitter TEXT NOT NULL REFERENCES parties (name),
    policy_name TEXT NOT NULL,
    policy_sha256 TEXT NOT NULL CHECK (length(policy_sha256) = 64),
    state TEXT NOT NULL REFERENCES job_states (state),
    decision TEXT CHECK (
        decision IS NULL
        OR decision IN ('released', 'released_sanitized', 'released_dp', 'rejected')
    ),
    reasons TEXT NOT NULL DEFAULT '[]',
    approval_state TEXT NOT NULL CHECK (
        approval_state IN ('not_required', 'pending', 'approved', 'denied')
    ),
    approval_by TEXT REFERENCES parties (name),
    approval_at REAL,
    created REAL NOT NULL,
    updated REAL NOT NULL
) STRICT;
CREATE INDEX jobs_by_created ON jobs (created, id);
CREATE INDEX jobs_by_dataset ON jobs (dataset_id, created, id);
CREATE INDEX jobs_by_algorithm ON jobs (algorithm_id, created, id);
CREATE INDEX jobs_by_submitter ON jobs (submitter, created, id);
CREATE INDEX jobs_by_state ON jobs (state, created, id);

CREATE TRIGGER jobs_start_queued BEFORE INSERT ON jobs
WHEN NEW.state IS NOT 'queued'
BEGIN
    SELECT RAISE(ABORT, 'a job starts in state queued');
END;

CREATE TRIGGER jobs_state_machine BEFORE UPDATE OF state ON jobs
WHEN NEW.state IS NOT OLD.state AND NOT EXISTS (
    SELECT 1 FROM job_transitions WHERE from_state = OLD.state AND to_state = NEW.state
)
BEGIN
    SELECT RAISE(ABORT, 'illegal job state transition');
END;

CREATE TABLE job_history (
    job_id TEXT NOT NULL REFERENCES jobs (id),
    seq INTEGER NOT NULL,
    from_state TEXT REFERENCES job_states (state),
    to_state TEXT NOT NULL REFERENCES job_states (state),
    at REAL NOT NULL,
    detail TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
) STRICT;

CREATE TRIGGER job_history_no_update BEFORE UPDATE ON job_history
BEGIN
    SELECT RAISE(ABORT, 'job history is append-only');
END;

CREATE TRIGGER job_history_no_delete BEFORE DELETE ON job_history
BEGIN
    SELECT RAISE(ABORT, 'job history is append-only');
END;

-- job_id is the primary key, hence UNIQUE: a job is released at most once.
CREATE TABLE releases (
    job_id TEXT NOT NULL PRIMARY KEY REFERENCES jobs (id),
    model_sha256 TEXT NOT NULL CHECK (length(model_sha256) = 64),
    released_at REAL NOT NULL
) STRICT;

CREATE TRIGGER releases_only_in_release_state BEFORE INSERT ON releases
WHEN (SELECT state FROM jobs WHERE id = NEW.job_id) IS NOT 'release'
BEGIN
    SELECT RAISE(ABORT, 'a release is recorded only for a job in state release');
END;

CREATE TRIGGER releases_no_update BEFORE UPDATE ON releases
BEGIN
    SELECT RAISE(ABORT, 'releases are permanent');
END;

CREATE TRIGGER releases_no_delete BEFORE DELETE ON releases
BEGIN
    SELECT RAISE(ABORT, 'releases are permanent');
END;

CREATE TABLE quota_counters (
    party TEXT NOT NULL REFERENCES parties (name),
    counter TEXT NOT NULL,
    period TEXT NOT NULL,
    used INTEGER NOT NULL CHECK (used >= 0),
    PRIMARY KEY (party, counter, period)
) STRICT;
"""
