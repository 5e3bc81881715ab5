"""Accounts: sign-up, sign-in, profiles and the performer catalogue (SPEC §3, §5, §8)."""
