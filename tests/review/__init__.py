"""Tests of ``segflow review``: pure scores and error kinds, and the command as a user runs it."""
