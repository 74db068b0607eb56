"""Judging a comparison: metrics, thresholds, verdicts, hints, routing, calibration."""
