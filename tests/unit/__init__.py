"""Unit tests of pure logic: no SUMO, no PostgreSQL, no daemon, no network; seconds in all."""
