"""Tests of the HTTP service, the web page and attention plots."""
