"""Presence subscriptions: tokens, users, shards, the leased scheduler, renewal, lifecycle, resync."""
