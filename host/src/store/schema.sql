-- Metadata of one backend's store. Version in PRAGMA user_version.
--
-- Names, parentage and references live here; layer bytes live in the backend.
-- Every row that precedes data on disk is written under a lease, and every
-- deletion is recorded in `removals` until the data is gone, so an
-- interrupted process leaves nothing the next one cannot finish or undo.

-- Snapshots in containerd's sense: committed layers (named, e.g. by chain id),
-- active (writable) layers and views, each backed by one backend layer `id`.
CREATE TABLE snapshots (
    key       TEXT PRIMARY KEY,
    id        TEXT NOT NULL UNIQUE,
    kind      TEXT NOT NULL CHECK (kind IN ('active', 'view', 'committed')),
    parent    TEXT REFERENCES snapshots(key),
    created   INTEGER NOT NULL,  -- ns since the Unix epoch
    updated   INTEGER NOT NULL,
    last_used INTEGER NOT NULL DEFAULT 0,
    bytes     INTEGER NOT NULL DEFAULT 0,  -- usage at commit (committed only)
    inodes    INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE INDEX snapshots_parent ON snapshots(parent);

CREATE TABLE labels (
    key   TEXT NOT NULL REFERENCES snapshots(key) ON DELETE CASCADE,
    name  TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (key, name)
) STRICT;

-- What an image layer is, beyond its snapshot (named by chain id).
CREATE TABLE layers (
    chain_id  TEXT PRIMARY KEY REFERENCES snapshots(key) ON DELETE CASCADE,
    diff_id   TEXT NOT NULL,
    tar_bytes INTEGER NOT NULL
) STRICT;

CREATE TABLE images (
    name            TEXT PRIMARY KEY,
    manifest_digest TEXT NOT NULL,
    config_digest   TEXT NOT NULL,
    top_chain_id    TEXT REFERENCES snapshots(key),  -- NULL for an image without layers
    created         INTEGER NOT NULL
) STRICT;
CREATE INDEX images_top ON images(top_chain_id);

CREATE TABLE image_layers (
    image      TEXT NOT NULL REFERENCES images(name) ON DELETE CASCADE,
    idx        INTEGER NOT NULL,
    digest     TEXT NOT NULL,
    media_type TEXT NOT NULL,
    size       INTEGER NOT NULL,
    diff_id    TEXT NOT NULL,
    chain_id   TEXT NOT NULL REFERENCES snapshots(key),
    PRIMARY KEY (image, idx)
) STRICT;
CREATE INDEX image_layers_chain ON image_layers(chain_id);
CREATE INDEX image_layers_digest ON image_layers(digest);

-- Blobs in the content store (<state>/content/sha256/<hex>), referenced by
-- images through manifest, config and layer digests.
CREATE TABLE blobs (
    digest     TEXT PRIMARY KEY,
    size       INTEGER NOT NULL,
    media_type TEXT NOT NULL
) STRICT;

CREATE TABLE containers (
    name       TEXT PRIMARY KEY,
    key        TEXT NOT NULL UNIQUE REFERENCES snapshots(key) ON DELETE CASCADE,
    image      TEXT NOT NULL,
    size_limit INTEGER,
    created    INTEGER NOT NULL
) STRICT;

-- Who holds a container mount: one row per (snapshot, caller).
CREATE TABLE mounts (
    key    TEXT NOT NULL REFERENCES snapshots(key) ON DELETE CASCADE,
    caller TEXT NOT NULL,
    target TEXT NOT NULL,
    PRIMARY KEY (key, caller)
) STRICT;

-- An operation in progress, owned by a process (pid + start time, so a
-- recycled pid is not mistaken for the owner).
CREATE TABLE leases (
    id         TEXT PRIMARY KEY,
    pid        INTEGER NOT NULL,
    start_time INTEGER NOT NULL,
    created    INTEGER NOT NULL
) STRICT;

-- Snapshots a lease created (discarded if the lease dies) or merely holds
-- (protected from removal while the lease lives).
CREATE TABLE lease_refs (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    lease   TEXT NOT NULL REFERENCES leases(id) ON DELETE CASCADE,
    key     TEXT NOT NULL,
    created INTEGER NOT NULL
) STRICT;
CREATE INDEX lease_refs_key ON lease_refs(key);

-- Backend layers whose rows are gone but whose data may remain.
CREATE TABLE removals (
    id    TEXT PRIMARY KEY,
    lease TEXT
) STRICT;
