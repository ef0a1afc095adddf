"""Upstream adapters: each turns one upstream's wire protocol into the same run events."""
