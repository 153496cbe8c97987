"""Evaluation at unseen lengths: evaluators, the extension comparison, reports and plots."""
