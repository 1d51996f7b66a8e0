"""Merchant records and their API keys: issuing, hashing, authenticating, rotating, revoking."""
