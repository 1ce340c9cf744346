-- Schema version 2: users in the shared database ([users] backend = "postgresql"),
-- so a `petrel user add` on one node is seen by every node.

CREATE TABLE petrel_user (
    address       TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,   -- argon2id (PLAIN, LOGIN)
    scram         TEXT NOT NULL    -- RFC 5802 keys, ScramSecret.encode(); '' if none
);
