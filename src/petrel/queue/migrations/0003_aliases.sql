-- Schema version 3: aliases in the shared database ([users] backend = "postgresql"),
-- so a `petrel alias add` on one node is expanded by every node. A new table only:
-- nothing of versions 1 and 2 changes.

CREATE TABLE petrel_alias (
    name    TEXT PRIMARY KEY,  -- lower-cased: a bare local part or local@domain
    targets TEXT NOT NULL      -- comma-separated, as written after the colon of the file
);
