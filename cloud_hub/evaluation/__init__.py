"""Evaluation: point-wise metrics on labelled tables, NAB streaming scores, reports."""
