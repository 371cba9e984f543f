"""Workers: claim jobs, run them on their executors, report outcomes."""
