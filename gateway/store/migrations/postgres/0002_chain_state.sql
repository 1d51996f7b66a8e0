-- Chain watchers: the recent chain they have processed (their checkpoint) and the indexes that let them
-- find the payments of a block range without scanning every payment. PostgreSQL form of
-- sqlite/0002_chain_state.sql.

-- One row per height of the main chain as the watcher last saw it; the highest row is its checkpoint.
-- Kept for the last few hundred heights only: enough to find the fork point of any reorg the policy
-- cares about, and to tell a payment whose block left the main chain.
CREATE TABLE chain_blocks (
    chain       TEXT COLLATE "C" NOT NULL,
    height      BIGINT NOT NULL CHECK (height >= 0),
    hash        TEXT COLLATE "C" NOT NULL,
    prev_hash   TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (chain, height)
);

-- Payments by chain and block height: confirmation updates read the recent heights, retraction reads the
-- heights of disconnected blocks, and the mempool tracker reads the unconfirmed (NULL height) ones.
CREATE INDEX payments_chain_height ON payments(chain, block_height);
