"""Evaluation: sample responses from several policies, score them, and summarise with bootstrap intervals."""
