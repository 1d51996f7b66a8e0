-- Coins leaving invoice addresses (the merchant's wallet sweeping what its customers paid), as the chain
-- watchers see them in blocks. PostgreSQL form of sqlite/0009_address_spends.sql.
--
-- Rows are written in the same transaction as the block's chain_blocks row, so a watcher killed mid-block
-- writes them again (ON CONFLICT DO NOTHING) and a reorg deletes them with the blocks that left the chain.
CREATE TABLE address_spends (
    chain         TEXT COLLATE "C" NOT NULL,
    spend_key     TEXT COLLATE "C" NOT NULL,     -- bitcoin: spending txid:input index; ethereum: tx hash:native|gas or tx hash:log index
    asset         TEXT COLLATE "C" NOT NULL,
    address       TEXT COLLATE "C" NOT NULL,     -- the invoice address the coins left
    amount_minor  TEXT COLLATE "C" NOT NULL,     -- satoshis, wei or token base units leaving it (fees included for ETH)
    payment_key   TEXT COLLATE "C",              -- bitcoin: the payment output spent; NULL for account-based chains
    tx_id         TEXT COLLATE "C" NOT NULL,
    block_hash    TEXT COLLATE "C" NOT NULL,
    block_height  BIGINT NOT NULL CHECK (block_height >= 0),
    PRIMARY KEY (chain, spend_key)
);
CREATE INDEX address_spends_height ON address_spends(chain, block_height);
