"""Renderers: pure functions of a Report (table, JSON, JUnit, HTML, SVG/PNG plots)."""
