"""The admin area for staff (SPEC §7)."""
