"""Evaluation: latency from session timelines, judged quality, reports."""
