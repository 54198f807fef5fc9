"""Evaluation: metrics, the base-vs-finetuned harness, in-loop evaluation, selection and reports."""
