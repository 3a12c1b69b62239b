"""Tests of the development stack helpers."""
